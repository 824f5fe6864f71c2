//! `gatehouse serve`, `check`, `openapi routes` and `certs dev`: loading a
//! config and running or checking it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use gatehouse::app::{self, StartOptions};
use gatehouse::config::{self, Loaded};
use gatehouse::server;
use gatehouse::store::{self, KeyStore};
use gatehouse::telemetry::access_log::{self, AccessLog};

use crate::*;

pub(crate) fn openapi_routes(file: &std::path::Path, path_prefix: Option<&str>) -> ExitCode {
    match gatehouse::openapi::describe(file, path_prefix) {
        Ok((lines, findings)) => {
            for line in &lines {
                println!("{line}");
            }
            for f in &findings {
                eprintln!("unsupported: {f}");
            }
            eprintln!(
                "{} route(s), {} unsupported construct(s)",
                lines.len(),
                findings.len()
            );
            ExitCode::SUCCESS
        }
        Err(findings) => {
            for f in &findings {
                let what = if f.fatal { "error" } else { "unsupported" };
                eprintln!("{what}: {f}");
            }
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn check(config: &std::path::Path) -> ExitCode {
    match app::check(config, &environment()) {
        Ok((routes, upstreams)) => {
            // Unsupported OpenAPI constructs a table allowed: still reported.
            if let Ok(loaded) = config::load(config) {
                for w in gatehouse::openapi::warnings(&loaded) {
                    eprintln!("warning: {w}");
                }
            }
            println!(
                "{}: ok ({routes} routes, {upstreams} upstreams)",
                config.display()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems.0 {
                eprintln!("{p}");
            }
            eprintln!("{} problem(s) found", problems.0.len());
            ExitCode::FAILURE
        }
    }
}

/// `gatehouse serve`: installs the log subscriber and the access log
/// writer, starts the runtime and serves until SIGTERM or SIGINT.
pub(crate) fn run_serve(
    log_level: &str,
    log_format: LogFormat,
    config: PathBuf,
    watch: bool,
    settings: &ServeSettings,
) -> anyhow::Result<ExitCode> {
    let _log_guard = init_logging(log_level, log_format)?;
    let trace = settings.otel.settings()?;
    // JSON access lines skip the subscriber: their own writer thread
    // (see gatehouse::telemetry::access_log). Dropped last, after the
    // runtime, so that every line is written.
    let access = match log_format {
        LogFormat::Json => Some(
            AccessLog::start(std::io::stdout(), access_log::DEFAULT_CAPACITY)
                .context("cannot start the access log writer")?,
        ),
        LogFormat::Text => None,
    };
    let opts = StartOptions {
        watch,
        env: environment(),
        metrics: settings.metrics,
        trace,
        aws: settings.aws.settings(),
        access_log: access.as_ref().map(|(log, _)| log.clone()),
        ..StartOptions::new(config)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = runtime.block_on(serve(opts));
    drop(runtime);
    drop(access);
    code
}

async fn serve(opts: StartOptions) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let running = match server::start(opts).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("gatehouse: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                let _ = running.reload().await;
            }
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
        }
    }
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// `gatehouse certs dev`: a development CA and a localhost certificate.
pub(crate) fn certs_dev(dir: &Path) -> anyhow::Result<ExitCode> {
    let paths = gatehouse::tls::dev_certs(
        dir,
        &dir.join("localhost.pem"),
        &dir.join("localhost-key.pem"),
    )?;
    println!("CA certificate:     {}", paths.ca.display());
    println!("server certificate: {}", paths.cert.display());
    println!("server key:         {}", paths.key.display());
    println!(
        "try: curl --cacert {} https://localhost:8443/hello",
        paths.ca.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn cli_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(crate) fn load_config(path: &Path) -> anyhow::Result<Loaded> {
    config::load(path).map_err(|problems| anyhow::anyhow!("{problems}"))
}

pub(crate) async fn open_store(loaded: &Loaded) -> anyhow::Result<Arc<dyn KeyStore>> {
    store::open(&loaded.config.store.options(&loaded.base_dir))
        .await
        .context("cannot open the store")
}
