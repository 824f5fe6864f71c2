//! The gatehouse command line: the only place that reads flags and the
//! environment, installs the log subscriber, and wires the parts together.
//!
//! The subcommands live under `src/cli/`, one file per group.

mod cli;

use cli::*;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use gatehouse::config::Environment;
use gatehouse::telemetry::access_log::{self, AccessLog};
use gatehouse::tls;

// glibc malloc showed up at ~15% of the proxy's CPU under load; mimalloc's
// thread-local free lists suit the many small per-request allocations.
// Built with `no_thp`: mimalloc otherwise asks for transparent huge pages on
// its arenas, and each touched 2 MiB page counts whole in RSS (measured with
// bench/hold_conns.py on the bench config: 41 MB at start and 85 MB with
// 1,000 idle connections, against 28 and 57 without).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Installs the log subscriber. Lines are written by a dedicated thread
/// (a write to a slow stdout must never block a runtime worker); the
/// returned guard flushes what is queued when dropped at exit. If the queue
/// (128k lines) is full, lines are dropped rather than stalling requests.
fn init_logging(
    level: &str,
    format: LogFormat,
) -> anyhow::Result<tracing_appender::non_blocking::WorkerGuard> {
    // rustls warns once per handshake about an IP address sent as SNI; any
    // client can trigger that, so its log is kept to errors unless asked.
    let directives = if level.contains("rustls") {
        level.to_owned()
    } else {
        format!("{level},rustls=error")
    };
    let filter =
        tracing_subscriber::EnvFilter::try_new(&directives).context("invalid --log-level")?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))?;
    Ok(guard)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gatehouse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { config } => Ok(check(&config)),
        Command::Openapi {
            command: OpenapiCommand::Routes { file, path_prefix },
        } => Ok(openapi_routes(&file, path_prefix.as_deref())),
        Command::Consumers { target, command } => {
            cli_runtime()?.block_on(consumers(&target, command))
        }
        Command::Keys { target, command } => cli_runtime()?.block_on(keys(&target, command)),
        Command::Upstream { target, command } => {
            cli_runtime()?.block_on(upstream_cli(&target, command))
        }
        Command::HashSecret { generate } => hash_secret(generate),
        Command::Token {
            config,
            issuer,
            sub,
            scopes,
            ttl,
            claims,
        } => token(&config, &issuer, &sub, &scopes, ttl, &claims),
        Command::Certs {
            command: CertsCommand::Dev { dir },
        } => {
            let paths = tls::dev_certs(
                &dir,
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
        Command::Serve { config, no_watch } => {
            let _log_guard = init_logging(&cli.log_level, cli.log_format)?;
            // JSON access lines skip the subscriber: their own writer thread
            // (see gatehouse::telemetry::access_log). Dropped last, after
            // the runtime, so that every line is written.
            let access = match cli.log_format {
                LogFormat::Json => Some(
                    AccessLog::start(std::io::stdout(), access_log::DEFAULT_CAPACITY)
                        .context("cannot start the access log writer")?,
                ),
                LogFormat::Text => None,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let log = access.as_ref().map(|(log, _)| log.clone());
            let code = runtime.block_on(serve(config, !no_watch, log));
            drop(runtime);
            drop(access);
            code
        }
    }
}

/// The process environment, handed to the library (which never reads it).
fn environment() -> Environment {
    // vars_os: a variable that is not UTF-8 is skipped, not a panic.
    Environment::new(
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    )
}
