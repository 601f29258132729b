//! The command line.
use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "drainer",
    version,
    about = "Stop a TCP server without dropping a live connection"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a server under drainer: on SIGTERM/SIGINT refuse new connections, wait for the live
    /// ones to close (or the deadline), then pass the signal on.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A TCP port the server listens on (repeat for several).
    #[arg(long = "port", short = 'p', required = true, value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// How long to wait for live connections to close before releasing the server anyway.
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// After releasing the server, how long it may take to exit before its process group is
    /// sent SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub kill_after: Duration,

    /// The cgroup v2 directory whose sockets are tracked; default: the root of the cgroup v2
    /// hierarchy, which covers every process.
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,

    /// The server command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// `300s`, `5m`, `1h30m`, `250ms`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|err| format!("{err}: write a duration such as 300s, 5m or 1h30m"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("drainer").chain(args.iter().copied()))
    }

    #[test]
    fn run_with_defaults() {
        let cli = parse(&[
            "run", "--port", "8000", "-p", "9000", "--", "uvicorn", "app:app",
        ])
        .unwrap();
        let Command::Run(run) = cli.command;
        assert_eq!(run.ports, [8000, 9000]);
        assert_eq!(run.drain_timeout, Duration::from_secs(300));
        assert_eq!(run.kill_after, Duration::from_secs(30));
        assert_eq!(run.command, ["uvicorn", "app:app"]);
    }

    #[test]
    fn rejects_bad_input() {
        for args in [
            &["run", "--port", "8000"][..],
            &["run", "--port", "0", "--", "x"],
            &["run", "--port", "65536", "--", "x"],
            &["run", "--", "x"],
            &[
                "run",
                "--port",
                "8000",
                "--drain-timeout",
                "soon",
                "--",
                "x",
            ],
            &["run", "--port", "8000", "--frobnicate", "--", "x"],
        ] {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
    }
}
