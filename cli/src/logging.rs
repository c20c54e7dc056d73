//! Log setup: structured lines on stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Daemons log at `info` (openraft's own chatter at `warn`); commands only warn, so their
/// stdout stays clean for output.
pub fn init(level: Option<&str>, daemon: bool) {
    let default = if daemon { "info,openraft=warn" } else { "warn,openraft=error" };
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
