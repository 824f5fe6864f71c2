//! The command line's flags and subcommands (clap).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::ServeSettings;

/// gatehouse: a secure API gateway.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub(crate) struct Cli {
    /// Log level or filter (e.g. `info`, `gatehouse=debug`).
    #[arg(long, env = "GATEHOUSE_LOG", default_value = "info", global = true)]
    pub(crate) log_level: String,
    /// Log format.
    #[arg(long, env = "GATEHOUSE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json, global = true)]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
        #[command(flatten)]
        settings: ServeSettings,
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
    /// OpenAPI helpers.
    Openapi {
        #[command(subcommand)]
        command: OpenapiCommand,
    },
    /// Certificate helpers.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Manage consumers (works on the configured store, gateway running or not).
    Consumers {
        #[command(flatten)]
        target: StoreTarget,
        #[command(subcommand)]
        command: ConsumersCommand,
    },
    /// Manage API keys (works on the configured store, gateway running or not).
    Keys {
        #[command(flatten)]
        target: StoreTarget,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Upstreams of a running gateway, through its admin API: health,
    /// ejections, breakers, traffic shifts between sets, drains.
    Upstream {
        #[command(flatten)]
        target: AdminTarget,
        #[command(subcommand)]
        command: UpstreamCommand,
    },
    /// A consumer's usage (requests, status classes, bytes, rate-limit
    /// refusals) from the store, by hour or by day.
    Usage(UsageArgs),
    /// Print the argon2id hash of a secret read from standard input (one
    /// line), for `[admin] token_hash`. With --generate, make a new random
    /// token and print it and its hash.
    HashSecret {
        /// Generate a random 256-bit token instead of reading one.
        #[arg(long)]
        generate: bool,
    },
    /// Sign a development JWT with an issuer's local signing key.
    Token {
        /// The main config file.
        #[arg(
            long,
            short,
            env = "GATEHOUSE_CONFIG",
            default_value = "gatehouse.toml"
        )]
        config: PathBuf,
        /// The issuer's name in the config.
        #[arg(long)]
        issuer: String,
        /// The subject (`sub`).
        #[arg(long)]
        sub: String,
        /// A scope to grant (repeat for more).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Lifetime.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// An extra claim `name=value` (value parsed as JSON if it can be; repeat for more).
        #[arg(long = "claim")]
        claims: Vec<String>,
    },
}

/// Which store a management command works on.
#[derive(Debug, Args)]
pub(crate) struct StoreTarget {
    /// The main config file (its `[store]` section names the store).
    #[arg(
        long,
        short,
        env = "GATEHOUSE_CONFIG",
        default_value = "gatehouse.toml",
        global = true
    )]
    pub(crate) config: PathBuf,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Text, global = true)]
    pub(crate) output: Output,
}

/// `gatehouse usage`.
#[derive(Debug, Args)]
pub(crate) struct UsageArgs {
    /// The main config file (its `[store]` section names the store).
    #[arg(
        long,
        short,
        env = "GATEHOUSE_CONFIG",
        default_value = "gatehouse.toml"
    )]
    pub(crate) config: PathBuf,
    /// The consumer's name or id.
    #[arg(long)]
    pub(crate) consumer: String,
    /// From when: a duration back (`7d`, `24h`), a UTC date (`2026-12-01`)
    /// or Unix seconds.
    #[arg(long, default_value = "7d")]
    pub(crate) since: String,
    /// Bucket size: `hour` (kept for `[usage] minute_retention`) or `day`.
    #[arg(long, default_value = "day", value_parser = parse_by)]
    pub(crate) by: gatehouse::usage::By,
    /// One row per key instead of the consumer's keys summed.
    #[arg(long)]
    pub(crate) per_key: bool,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = UsageOutput::Text)]
    pub(crate) output: UsageOutput,
}

fn parse_by(s: &str) -> Result<gatehouse::usage::By, String> {
    s.parse()
}

/// How `gatehouse usage` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum UsageOutput {
    /// Aligned columns for people.
    Text,
    /// JSON for scripts.
    Json,
    /// CSV for spreadsheets and billing.
    Csv,
}

/// Which running gateway an admin command talks to.
#[derive(Debug, Args)]
pub(crate) struct AdminTarget {
    /// The admin API's base URL.
    #[arg(
        long,
        env = "GATEHOUSE_ADMIN_URL",
        default_value = "http://127.0.0.1:9901",
        global = true
    )]
    pub(crate) admin_url: String,
    /// The admin token (better in the environment than on the command line).
    #[arg(
        long,
        env = "GATEHOUSE_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub(crate) admin_token: Option<gatehouse::config::Secret>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Text, global = true)]
    pub(crate) output: Output,
}

#[derive(Debug, Subcommand)]
pub(crate) enum UpstreamCommand {
    /// Every upstream with its targets' state.
    List,
    /// One upstream.
    Show {
        /// The upstream's name.
        name: String,
    },
    /// Move traffic between target sets: `--to green=100` (sets not named get 0).
    Shift {
        /// The upstream's name.
        name: String,
        /// `SET=WEIGHT`, repeat or separate with commas.
        #[arg(long, required = true, value_delimiter = ',')]
        to: Vec<String>,
        /// Wait until the sets left with weight 0 have no request in flight.
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits at most.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        wait_timeout: Duration,
    },
    /// Stop sending new requests to a target (those in flight finish).
    Drain {
        /// The upstream's name.
        name: String,
        /// The target's URL as configured.
        target: String,
    },
    /// Send requests to a drained target again.
    Undrain {
        /// The upstream's name.
        name: String,
        /// The target's URL as configured.
        target: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns for people.
    Text,
    /// JSON for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConsumersCommand {
    /// Create a consumer.
    Create {
        /// Unique name.
        #[arg(long)]
        name: String,
        /// Plan or tier.
        #[arg(long)]
        plan: Option<String>,
        /// Metadata, a JSON object.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// List consumers.
    List,
    /// Show a consumer (by id or name) and its keys.
    Show {
        /// Id or name.
        consumer: String,
    },
    /// Disable a consumer: all its keys stop working.
    Disable {
        /// Id or name.
        consumer: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Create a key for a consumer; the key is printed once.
    Create {
        /// The consumer's id or name.
        #[arg(long)]
        consumer: String,
        /// A label for the key.
        #[arg(long, default_value = "default")]
        name: String,
        /// A scope to grant (repeat for more).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Lifetime, e.g. 90d.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List keys (of one consumer, or all).
    List {
        /// The consumer's id or name.
        #[arg(long)]
        consumer: Option<String>,
    },
    /// Revoke a key at once.
    Revoke {
        /// The key id.
        key: String,
    },
    /// Replace a key; the old one keeps working for the grace period.
    Rotate {
        /// The key id.
        key: String,
        /// How long the old key keeps working (default: `[api_keys] rotation_grace`).
        #[arg(long)]
        grace: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum OpenapiCommand {
    /// Print the routes an OpenAPI document (YAML or JSON) would create,
    /// and every construct the gateway refuses or handles partially (with
    /// the file and JSON pointer).
    Routes {
        /// The document.
        file: PathBuf,
        /// Prepended to every path (as an `[[openapi]]` table's `path_prefix`).
        #[arg(long)]
        path_prefix: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertsCommand {
    /// Write a local CA and a certificate for localhost / 127.0.0.1 / ::1.
    Dev {
        /// Directory to write ca.pem, ca-key.pem, localhost.pem and localhost-key.pem to.
        #[arg(long, env = "GATEHOUSE_CERTS_DIR", default_value = "certs")]
        dir: PathBuf,
    },
}
