//! Structured logs (tracing). Lines go through a bounded, non-blocking writer:
//! when it falls behind, lines are dropped and counted rather than slowing a
//! decision (SPEC §6).

pub mod traces;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Keeps the log writer alive and reports dropped lines.
pub struct Telemetry {
    /// Flushes pending lines when dropped (at shutdown).
    _guard: WorkerGuard,
    /// Lines dropped so far.
    pub dropped: ErrorCounter,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object a line (production).
    Json,
    /// Human-readable lines.
    Text,
}

/// Installs the global subscriber; `RUST_LOG` overrides the default `info`.
pub fn init(format: LogFormat) -> Telemetry {
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(16_384)
        .lossy(true)
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // A second init (tests, CLI subcommands) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    Telemetry {
        _guard: guard,
        dropped,
    }
}
