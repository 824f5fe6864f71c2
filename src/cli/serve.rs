//! `gatehouse serve`, `check` and `openapi routes`: loading a config and
//! running or checking it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use gatehouse::config::{self, Loaded};
use gatehouse::server::{self, StartOptions};
use gatehouse::store::{self, KeyStore};

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
    match server::check(config, &environment()) {
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

pub(crate) async fn serve(
    config: PathBuf,
    watch: bool,
    access_log: Option<gatehouse::telemetry::access_log::AccessLog>,
) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let running = match server::start(StartOptions {
        config_path: config,
        watch,
        env: environment(),
        access_log,
    })
    .await
    {
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
