//! The log subscriber `serve` installs (the only place one is installed).

use anyhow::Context;

use super::LogFormat;

/// Installs the log subscriber. Lines are written by a dedicated thread
/// (a write to a slow stdout must never block a runtime worker); the
/// returned guard flushes what is queued when dropped at exit. If the queue
/// (128k lines) is full, lines are dropped rather than stalling requests.
pub(crate) fn init_logging(
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
