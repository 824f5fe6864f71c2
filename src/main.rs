//! The gatehouse command line: the only place that reads flags and the
//! environment. It parses the flags (clap; every variable gatehouse honours
//! is a flag with `env =`, see `src/cli/settings.rs`), and runs the
//! subcommand, which builds the parts from typed settings.
//!
//! The subcommands live under `src/cli/`, one file per group.

mod cli;

use cli::*;

use std::process::ExitCode;

use clap::Parser;
use gatehouse::config::Environment;

// glibc malloc showed up at ~15% of the proxy's CPU under load; mimalloc's
// thread-local free lists suit the many small per-request allocations.
// Built with `no_thp`: mimalloc otherwise asks for transparent huge pages on
// its arenas, and each touched 2 MiB page counts whole in RSS (measured with
// bench/hold_conns.py on the bench config: 41 MB at start and 85 MB with
// 1,000 idle connections, against 28 and 57 without).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::Serve {
            config,
            no_watch,
            settings,
        } => run_serve(&cli.log_level, cli.log_format, config, !no_watch, &settings),
        Command::Check { config } => Ok(check(&config)),
        Command::Openapi {
            command: OpenapiCommand::Routes { file, path_prefix },
        } => Ok(openapi_routes(&file, path_prefix.as_deref())),
        Command::Consumers { target, command } => {
            cli_runtime()?.block_on(consumers(&target, command))
        }
        Command::Keys { target, command } => cli_runtime()?.block_on(keys(&target, command)),
        Command::Usage(args) => cli_runtime()?.block_on(usage_cli(&args)),
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
        } => certs_dev(&dir),
    }
}

/// The variables a config names (an issuer's `hmac_secret_env`), each read
/// when the library asks for it: at start and at every reload, never a
/// copy of the whole environment. Nothing else reaches the library this
/// way; gatehouse's own variables are flags (`src/cli/settings.rs`).
pub(crate) fn environment() -> Environment {
    Environment::lookup(process_var)
}

/// One variable of the process environment (not UTF-8: unset).
#[allow(clippy::disallowed_methods)] // main is the one reader of the environment
pub(crate) fn process_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
