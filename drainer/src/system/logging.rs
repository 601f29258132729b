//! Log output: tracing to stderr, filtered by `DRAINER_LOG` (default `info`); the eBPF programs'
//! aya-log records arrive through the `log` bridge at debug level.
use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("DRAINER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
