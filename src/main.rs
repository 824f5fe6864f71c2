//! The gatehouse command line: the only place that reads flags and the
//! environment, installs the log subscriber, and wires the parts together.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use gatehouse::server::{self, StartOptions};
use gatehouse::tls;

// glibc malloc showed up at ~15% of the proxy's CPU under load; mimalloc's
// thread-local free lists suit the many small per-request allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// gatehouse: a secure API gateway.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log level or filter (e.g. `info`, `gatehouse=debug`).
    #[arg(long, env = "GATEHOUSE_LOG", default_value = "info", global = true)]
    log_level: String,
    /// Log format.
    #[arg(long, env = "GATEHOUSE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The main config file.
        #[arg(
            long,
            short,
            env = "GATEHOUSE_CONFIG",
            default_value = "gatehouse.toml"
        )]
        config: PathBuf,
        /// Do not watch config, policy and certificate files (SIGHUP still reloads).
        #[arg(long, env = "GATEHOUSE_NO_WATCH", value_parser = clap::builder::BoolishValueParser::new())]
        no_watch: bool,
    },
    /// Validate the config and every policy file; print `file:line:column: reason` per problem.
    Check {
        /// The main config file.
        #[arg(
            long,
            short,
            env = "GATEHOUSE_CONFIG",
            default_value = "gatehouse.toml"
        )]
        config: PathBuf,
    },
    /// Certificate helpers.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Write a local CA and a certificate for localhost / 127.0.0.1 / ::1.
    Dev {
        /// Directory to write ca.pem, ca-key.pem, localhost.pem and localhost-key.pem to.
        #[arg(long, env = "GATEHOUSE_CERTS_DIR", default_value = "certs")]
        dir: PathBuf,
    },
}

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
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve(config, !no_watch))
        }
    }
}

fn check(config: &std::path::Path) -> ExitCode {
    match server::check(config) {
        Ok((routes, upstreams)) => {
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

async fn serve(config: PathBuf, watch: bool) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let running = match server::start(StartOptions {
        config_path: config,
        watch,
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
