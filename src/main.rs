//! The gatehouse command line: the only place that reads flags and the
//! environment, installs the log subscriber, and wires the parts together.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use gatehouse::admin::ops::{self, NewConsumer, NewKey, OpError, RotateKey};
use gatehouse::auth::{Clock, SystemClock};
use gatehouse::config::{self, Environment, Loaded};
use gatehouse::server::{self, StartOptions};
use gatehouse::store::{self, ApiKey, AuditEntry, Consumer, KeyStore};
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
struct StoreTarget {
    /// The main config file (its `[store]` section names the store).
    #[arg(
        long,
        short,
        env = "GATEHOUSE_CONFIG",
        default_value = "gatehouse.toml",
        global = true
    )]
    config: PathBuf,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
}

/// Which running gateway an admin command talks to.
#[derive(Debug, Args)]
struct AdminTarget {
    /// The admin API's base URL.
    #[arg(
        long,
        env = "GATEHOUSE_ADMIN_URL",
        default_value = "http://127.0.0.1:9901",
        global = true
    )]
    admin_url: String,
    /// The admin token (better in the environment than on the command line).
    #[arg(
        long,
        env = "GATEHOUSE_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    admin_token: Option<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
}

#[derive(Debug, Subcommand)]
enum UpstreamCommand {
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
enum Output {
    /// Aligned columns for people.
    Text,
    /// JSON for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
enum ConsumersCommand {
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
enum KeysCommand {
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
enum OpenapiCommand {
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
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve(config, !no_watch))
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

fn openapi_routes(file: &std::path::Path, path_prefix: Option<&str>) -> ExitCode {
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

fn check(config: &std::path::Path) -> ExitCode {
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

async fn serve(config: PathBuf, watch: bool) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let running = match server::start(StartOptions {
        config_path: config,
        watch,
        env: environment(),
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

fn cli_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn load_config(path: &Path) -> anyhow::Result<Loaded> {
    config::load(path).map_err(|problems| anyhow::anyhow!("{problems}"))
}

async fn open_store(loaded: &Loaded) -> anyhow::Result<Arc<dyn KeyStore>> {
    store::open(&loaded.config.store.options(&loaded.base_dir))
        .await
        .context("cannot open the store")
}

/// `cli:USER`, for the audit trail.
fn cli_actor() -> String {
    let user = environment()
        .get("USER")
        .unwrap_or_else(|| "unknown".to_owned());
    format!("cli:{user}")
}

/// Audits a CLI operation and turns its error into a message.
async fn audited<T>(
    store: &dyn KeyStore,
    action: &str,
    target: Option<&str>,
    result: Result<T, OpError>,
) -> anyhow::Result<T> {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    let entry = AuditEntry {
        at: SystemClock.now(),
        actor: cli_actor(),
        client: None,
        action: action.to_owned(),
        target: target.map(str::to_owned),
        outcome: outcome.to_owned(),
    };
    if let Err(e) = store.record_audit(&entry).await {
        eprintln!("gatehouse: warning: cannot write the audit entry: {e}");
    }
    result.map_err(|e| match e {
        OpError::Invalid(fields) => {
            let lines: Vec<String> = fields
                .iter()
                .map(|(f, m)| format!("  {f}: {}", m.join("; ")))
                .collect();
            anyhow::anyhow!("invalid input:\n{}", lines.join("\n"))
        }
        OpError::Store(source) => anyhow::anyhow!("store error: {source}"),
        other => anyhow::anyhow!("{other}"),
    })
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints `value` as JSON (`--output json`) or with `text`.
fn show<T: serde::Serialize>(json: bool, value: &T, text: impl FnOnce(&T)) -> anyhow::Result<()> {
    if json {
        print_json(value)
    } else {
        text(value);
        Ok(())
    }
}

fn when(t: Option<i64>) -> String {
    match t.and_then(|t| u64::try_from(t).ok()) {
        Some(secs) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs))
                .to_string()
        }
        None => "-".to_owned(),
    }
}

fn print_consumers(list: &[Consumer]) {
    println!(
        "{:<20} {:<24} {:<10} {:<21} DISABLED",
        "ID", "NAME", "PLAN", "CREATED"
    );
    for c in list {
        println!(
            "{:<20} {:<24} {:<10} {:<21} {}",
            c.id,
            c.name,
            c.plan.as_deref().unwrap_or("-"),
            when(Some(c.created_at)),
            when(c.disabled_at)
        );
    }
}

fn print_keys(list: &[ApiKey]) {
    println!(
        "{:<14} {:<20} {:<12} {:<24} {:<21} {:<21} REVOKED",
        "ID", "CONSUMER", "NAME", "SCOPES", "EXPIRES", "LAST USED"
    );
    for k in list {
        println!(
            "{:<14} {:<20} {:<12} {:<24} {:<21} {:<21} {}",
            k.id,
            k.consumer_id,
            k.name,
            if k.scopes.is_empty() {
                "-".to_owned()
            } else {
                k.scopes.join(",")
            },
            when(k.expires_at),
            when(k.last_used_at),
            when(k.revoked_at)
        );
    }
}

async fn consumers(target: &StoreTarget, command: ConsumersCommand) -> anyhow::Result<ExitCode> {
    let loaded = load_config(&target.config)?;
    let store = open_store(&loaded).await?;
    let store = store.as_ref();
    let now = SystemClock.now();
    let json = target.output == Output::Json;
    match command {
        ConsumersCommand::Create {
            name,
            plan,
            metadata,
        } => {
            let metadata = match metadata {
                Some(m) => serde_json::from_str(&m).context("--metadata must be a JSON object")?,
                None => serde_json::Map::new(),
            };
            let input = NewConsumer {
                name,
                plan,
                metadata,
            };
            let result = ops::create_consumer(store, now, input).await;
            let id = result.as_ref().ok().map(|c| c.id.clone());
            let c = audited(store, "consumer.create", id.as_deref(), result).await?;
            show(json, &c, |v| print_consumers(std::slice::from_ref(v)))?;
        }
        ConsumersCommand::List => {
            let list = audited(
                store,
                "consumer.list",
                None,
                store.list_consumers().await.map_err(OpError::from),
            )
            .await?;
            show(json, &list, |v| print_consumers(v))?;
        }
        ConsumersCommand::Show { consumer } => {
            let result = async {
                let c = ops::consumer(store, &consumer).await?;
                let keys = store.list_keys(Some(&c.id)).await?;
                Ok((c, keys))
            }
            .await;
            let (c, keys) = audited(store, "consumer.show", Some(&consumer), result).await?;
            if json {
                print_json(&serde_json::json!({"consumer": c, "keys": keys}))?;
            } else {
                print_consumers(std::slice::from_ref(&c));
                println!();
                print_keys(&keys);
            }
        }
        ConsumersCommand::Disable { consumer } => {
            let result = ops::disable_consumer(store, now, &consumer).await;
            let c = audited(store, "consumer.disable", Some(&consumer), result).await?;
            show(json, &c, |v| print_consumers(std::slice::from_ref(v)))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn keys(target: &StoreTarget, command: KeysCommand) -> anyhow::Result<ExitCode> {
    let loaded = load_config(&target.config)?;
    let store = open_store(&loaded).await?;
    let store = store.as_ref();
    let now = SystemClock.now();
    let json = target.output == Output::Json;
    let argon2 = loaded.config.api_keys.argon2();
    let print_created = |created: &ops::CreatedKey| -> anyhow::Result<()> {
        if json {
            print_json(created)
        } else {
            print_keys(std::slice::from_ref(&created.key));
            if let Some(previous) = &created.previous {
                println!(
                    "previous key {} now expires {}",
                    previous.id,
                    when(previous.expires_at)
                );
            }
            println!();
            println!("API key (shown once, store it now):");
            println!("{}", created.api_key);
            Ok(())
        }
    };
    match command {
        KeysCommand::Create {
            consumer,
            name,
            scopes,
            expires_in,
        } => {
            let input = NewKey {
                name,
                scopes,
                expires_in,
            };
            let result = ops::create_key(store, now, &argon2, &consumer, input).await;
            let id = result
                .as_ref()
                .map_or(consumer.clone(), |k| k.key.id.clone());
            let created = audited(store, "key.create", Some(&id), result).await?;
            print_created(&created)?;
        }
        KeysCommand::List { consumer } => {
            let result = async {
                let owner = match &consumer {
                    Some(c) => Some(ops::consumer(store, c).await?.id),
                    None => None,
                };
                Ok(store.list_keys(owner.as_deref()).await?)
            }
            .await;
            let list = audited(store, "key.list", consumer.as_deref(), result).await?;
            show(json, &list, |v| print_keys(v))?;
        }
        KeysCommand::Revoke { key } => {
            let result = ops::revoke_key(store, now, &key).await;
            let k = audited(store, "key.revoke", Some(&key), result).await?;
            show(json, &k, |v| print_keys(std::slice::from_ref(v)))?;
        }
        KeysCommand::Rotate { key, grace } => {
            let grace_default = loaded.config.api_keys.rotation_grace.0;
            let result = ops::rotate_key(
                store,
                now,
                &argon2,
                &key,
                RotateKey { grace },
                grace_default,
            )
            .await;
            let created = audited(store, "key.rotate", Some(&key), result).await?;
            print_created(&created)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn upstream_cli(target: &AdminTarget, command: UpstreamCommand) -> anyhow::Result<ExitCode> {
    use gatehouse::proxy::UpstreamStatus;
    let token = target
        .admin_token
        .as_deref()
        .context("the admin token is needed: --admin-token or GATEHOUSE_ADMIN_TOKEN")?;
    let api = gatehouse::admin::client::AdminClient::new(&target.admin_url, token);
    let json = target.output == Output::Json;
    let answer = |(status, body): (http::StatusCode, serde_json::Value)| {
        if status.is_success() {
            Ok(body)
        } else {
            let code = body["error"].as_str().unwrap_or("error").to_owned();
            let msg = body["message"].as_str().unwrap_or("").to_owned();
            let fields = body
                .get("fields")
                .map(|f| f.to_string())
                .unwrap_or_default();
            Err(anyhow::anyhow!("{status}: {code}: {msg} {fields}"))
        }
    };
    let one = |body: serde_json::Value| -> anyhow::Result<UpstreamStatus> {
        Ok(serde_json::from_value(body["upstream"].clone())?)
    };
    match command {
        UpstreamCommand::List => {
            let body = answer(api.get("/v1/upstreams").await?)?;
            let list: Vec<UpstreamStatus> = serde_json::from_value(body["upstreams"].clone())?;
            show(json, &list, |l| l.iter().for_each(print_upstream))?;
        }
        UpstreamCommand::Show { name } => {
            let u = one(answer(api.get(&format!("/v1/upstreams/{name}")).await?)?)?;
            show(json, &u, print_upstream)?;
        }
        UpstreamCommand::Drain { name, target } => {
            let path = format!("/v1/upstreams/{name}/targets/drain");
            let u = one(answer(
                api.post(&path, &serde_json::json!({"target": target}))
                    .await?,
            )?)?;
            show(json, &u, print_upstream)?;
        }
        UpstreamCommand::Undrain { name, target } => {
            let path = format!("/v1/upstreams/{name}/targets/undrain");
            let u = one(answer(
                api.post(&path, &serde_json::json!({"target": target}))
                    .await?,
            )?)?;
            show(json, &u, print_upstream)?;
        }
        UpstreamCommand::Shift {
            name,
            to,
            wait,
            wait_timeout,
        } => {
            let mut weights = std::collections::BTreeMap::new();
            for kv in &to {
                let (set, w) = kv
                    .split_once('=')
                    .context("--to takes SET=WEIGHT, e.g. green=100")?;
                let w: u32 = w.trim().parse().context("a weight is a whole number")?;
                weights.insert(set.trim().to_owned(), w);
            }
            let path = format!("/v1/upstreams/{name}/shift");
            let u = one(answer(
                api.post(&path, &serde_json::json!({"to": weights})).await?,
            )?)?;
            if !wait {
                show(json, &u, print_upstream)?;
                return Ok(ExitCode::SUCCESS);
            }
            let started = std::time::Instant::now();
            loop {
                let u = one(answer(api.get(&format!("/v1/upstreams/{name}")).await?)?)?;
                let busy: u64 = u
                    .sets
                    .iter()
                    .filter(|s| s.weight == 0)
                    .map(|s| s.in_flight)
                    .sum();
                if busy == 0 {
                    let idle: Vec<&str> = u
                        .sets
                        .iter()
                        .filter(|s| s.weight == 0)
                        .map(|s| s.name.as_str())
                        .collect();
                    show(json, &u, |u| {
                        print_upstream(u);
                        println!("idle: {}", idle.join(", "));
                    })?;
                    return Ok(ExitCode::SUCCESS);
                }
                if started.elapsed() >= wait_timeout {
                    eprintln!("gatehouse: {busy} requests still in flight after {wait_timeout:?}");
                    return Ok(ExitCode::FAILURE);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_upstream(u: &gatehouse::proxy::UpstreamStatus) {
    let sets: Vec<String> = u
        .sets
        .iter()
        .map(|s| format!("{}={} ({} in flight)", s.name, s.weight, s.in_flight))
        .collect();
    println!(
        "{}  breaker={}  in_flight={}  sets: {}",
        u.name,
        u.breaker,
        u.in_flight,
        sets.join(", ")
    );
    println!(
        "  {:<32} {:<8} {:>6} {:<8} {:<10} {:<8} {:>9} {:>10}",
        "TARGET", "SET", "WEIGHT", "HEALTHY", "EJECTED", "DRAINED", "IN_FLIGHT", "LATENCY_MS"
    );
    for t in &u.targets {
        let ejected = if t.ejected {
            format!("{}ms", t.ejected_for_ms)
        } else {
            "no".to_owned()
        };
        println!(
            "  {:<32} {:<8} {:>6} {:<8} {:<10} {:<8} {:>9} {:>10.2}",
            t.url, t.set, t.weight, t.healthy, ejected, t.drained, t.in_flight, t.latency_ewma_ms
        );
    }
}

fn hash_secret(generate: bool) -> anyhow::Result<ExitCode> {
    let settings = gatehouse::auth::api_key::Argon2Settings::default();
    let secret = if generate {
        let token = random_token()?;
        println!("token: {token}");
        token
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the secret from standard input")?;
        let secret = line.trim_end_matches(['\r', '\n']).to_owned();
        anyhow::ensure!(
            secret.len() >= 16,
            "the secret must be at least 16 characters"
        );
        secret
    };
    let hash = gatehouse::auth::api_key::hash_secret(&secret, &settings)
        .map_err(|e| anyhow::anyhow!("cannot hash: {e}"))?;
    if generate {
        println!("hash:  {hash}");
    } else {
        println!("{hash}");
    }
    Ok(ExitCode::SUCCESS)
}

/// 256 bits from the OS RNG, as 64 hex digits.
fn random_token() -> anyhow::Result<String> {
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| anyhow::anyhow!("the OS random generator failed: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn token(
    config: &Path,
    issuer: &str,
    sub: &str,
    scopes: &[String],
    ttl: Duration,
    claims: &[String],
) -> anyhow::Result<ExitCode> {
    let loaded = load_config(config)?;
    let spec = loaded
        .config
        .jwt_issuers
        .iter()
        .map(|s| s.get_ref())
        .find(|s| s.name == issuer)
        .with_context(|| format!("no [[jwt_issuer]] named `{issuer}` in {}", config.display()))?;
    gatehouse::auth::jwt::ensure_dev_keys(spec, &loaded.base_dir)?;
    let env = environment();
    let jwks = gatehouse::auth::jwks::JwksRegistry::new()?;
    let built =
        gatehouse::auth::jwt::Issuer::build(spec, &loaded.base_dir, &|n| env.get(n), &jwks)?;
    let mut extra = serde_json::Map::new();
    for c in claims {
        let (k, v) = c
            .split_once('=')
            .with_context(|| format!("--claim `{c}` is not name=value"))?;
        let value =
            serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_owned()));
        extra.insert(k.to_owned(), value);
    }
    let token = gatehouse::auth::jwt::mint(&built, sub, scopes, ttl, extra, SystemClock.now())?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
