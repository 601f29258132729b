//! The command line.
use std::{ffi::OsString, net::SocketAddr, path::PathBuf, str::FromStr as _, time::Duration};

use clap::{Args, CommandFactory as _, Parser, Subcommand};
use nix::sys::signal::Signal;

use crate::{engine::policy::DrainSettings, system::pidfd::check_pid};

/// Where `drainer daemon` listens and the clients connect, unless told otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/drainer/drainer.sock";

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
    /// Guard ports for a server drainer does not start (a sidecar, a systemd companion); drain on
    /// SIGTERM/SIGINT or on request.
    Daemon(DaemonArgs),
    /// Ask the daemon to start draining (exit 0 drained, 3 deadline passed, 4 released early,
    /// 5 resumed).
    Drain(DrainArgs),
    /// Show the daemon's state, live count and most idle connections.
    Status(StatusArgs),
    /// Release now, whatever the live count.
    Release(SocketArg),
    /// End a drain started by `drainer drain` (or HTTP /drain) and serve again: refusal stops,
    /// readiness returns, waiters are told (exit 5).
    Resume(SocketArg),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A TCP port the server listens on (repeat for several).
    #[arg(long = "port", short = 'p', required = true, value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    #[command(flatten)]
    pub drain: DrainFlags,

    /// After releasing the server, how long it may take to exit before its process group is
    /// sent SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub kill_after: Duration,

    /// Run the server as this user (name or uid), with no capabilities at all.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// With --user: run the server with this group (name or gid) instead of the user's own.
    #[arg(long, value_name = "GROUP", requires = "user")]
    pub group: Option<String>,

    /// Restart the server on this signal without refusing anyone: a new generation of COMMAND
    /// starts with `{port}` in its arguments (and DRAINER_PORT in its environment) set to the
    /// first --port, or to a free port while that one is taken; `{port:P}` and DRAINER_PORT_P
    /// the same for each --port P. Once it listens on all of them it takes every new
    /// connection, and the old generation drains its own as on a stop, then gets SIGTERM.
    #[arg(long, value_name = "SIGNAL", value_parser = parse_restart_signal)]
    pub restart_signal: Option<Signal>,

    /// With --restart-signal: how long a new generation may take to listen before it is stopped
    /// and the old one serves on.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_positive_duration)]
    pub ready_timeout: Duration,

    /// The server command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// How a drain runs, for `run` and `daemon`.
#[derive(Debug, Args)]
pub struct DrainFlags {
    /// How long to wait for live connections to close before releasing the server anyway.
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// After the drain starts (readiness fails at once), keep accepting new connections for this
    /// long, while load balancers and endpoint updates catch up; refuse them after it. The
    /// server is not released before it ends.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub accept_for: Duration,

    /// Release once every live connection left has been idle this long (no payload either way,
    /// nothing queued): idle pooled connections are left to the server's own shutdown.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub release_when_idle: Option<Duration>,
}

impl DrainFlags {
    /// The drain these flags configure.
    pub fn settings(&self) -> DrainSettings {
        DrainSettings {
            timeout: self.drain_timeout,
            accept_for: self.accept_for,
            release_when_idle: self.release_when_idle,
        }
    }

    /// The checks clap cannot make on one flag alone.
    pub fn check(&self) -> Result<(), String> {
        // The rule is the policy's; the message names the flags.
        if self.settings().check().is_err() {
            return Err(format!(
                "--accept-for {} leaves no time to drain before --drain-timeout {}: make the \
                 accept window shorter than the deadline",
                humantime::format_duration(self.accept_for),
                humantime::format_duration(self.drain_timeout)
            ));
        }
        Ok(())
    }
}

impl RunArgs {
    /// The checks clap cannot make on one flag alone.
    pub fn check(&self) -> Result<(), String> {
        self.drain.check()
    }
}

impl Cli {
    /// Parses the command line and checks what spans several flags; exits 2 on bad arguments.
    pub fn parse_checked() -> Self {
        let cli = Self::parse();
        let checked = match &cli.command {
            Command::Run(args) => args.check(),
            Command::Daemon(args) => args.drain.check(),
            _ => Ok(()),
        };
        if let Err(problem) = checked {
            Self::command()
                .error(clap::error::ErrorKind::ArgumentConflict, problem)
                .exit();
        }
        cli
    }
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("release_target").multiple(false))]
pub struct DaemonArgs {
    /// A TCP port to guard (repeat for several).
    #[arg(long = "port", short = 'p', required = true, value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// The network namespace to guard: /proc/PID/ns/net or /run/netns/NAME; default: drainer's own.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,

    #[command(flatten)]
    pub drain: DrainFlags,

    /// The control socket for `drainer drain`, `status` and `release`.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,

    /// A uid, besides root, allowed to use the control socket (repeat for several).
    #[arg(long = "allow-uid", value_name = "UID")]
    pub allow_uids: Vec<u32>,

    /// A gid whose members (by primary group) may use the control socket (repeat for several).
    #[arg(long = "allow-gid", value_name = "GID")]
    pub allow_gids: Vec<u32>,

    /// Serve /readyz, /metrics and (with --http-token-file) /drain on this address.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,

    /// A file holding the token /drain requires as `Authorization: Bearer <token>`.
    #[arg(long, value_name = "FILE", requires = "http")]
    pub http_token_file: Option<PathBuf>,

    /// At release, signal this process (held from start: if it exits, nobody is signalled).
    #[arg(long, value_name = "PID", group = "release_target", value_parser = parse_release_pid)]
    pub release_pid: Option<i32>,

    /// At release, signal the process whose pid this file holds (read at release time). The file
    /// must be a regular file owned by root (or drainer's user), not writable by group or others.
    #[arg(long, value_name = "FILE", group = "release_target")]
    pub release_pidfile: Option<PathBuf>,

    /// At release, signal every process of this cgroup v2 directory and its descendants.
    #[arg(long, value_name = "DIR", group = "release_target")]
    pub release_cgroup: Option<PathBuf>,

    /// The signal the release target receives.
    #[arg(long, value_name = "SIGNAL", default_value = "SIGTERM", value_parser = parse_signal)]
    pub release_signal: Signal,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// Wait until the daemon releases, showing progress.
    #[arg(long)]
    pub wait: bool,

    /// This drain's deadline, if this request starts the drain (default: the daemon's).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// This drain's accept window (default: the daemon's --accept-for).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub accept_for: Option<Duration>,

    /// Release this drain once every connection left has been idle this long (default: the
    /// daemon's --release-when-idle).
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub release_when_idle: Option<Duration>,

    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, Args)]
pub struct SocketArg {
    /// The daemon's control socket.
    #[arg(long = "socket", value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    pub path: PathBuf,
}

/// `SIGTERM`, `TERM` or `15`.
fn parse_signal(text: &str) -> Result<Signal, String> {
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    text.parse::<i32>()
        .ok()
        .and_then(|n| Signal::try_from(n).ok())
        .or_else(|| Signal::from_str(&name).ok())
        .ok_or_else(|| format!("unknown signal {text:?}: write e.g. SIGTERM, TERM or 15"))
}

/// A signal that can restart the server: not one that stops drainer, nor one no process can
/// catch.
fn parse_restart_signal(text: &str) -> Result<Signal, String> {
    let signal = parse_signal(text)?;
    match signal {
        Signal::SIGTERM | Signal::SIGINT => Err(format!(
            "{signal} stops drainer and drains the server: choose another, e.g. SIGHUP or SIGUSR2"
        )),
        Signal::SIGKILL | Signal::SIGSTOP => Err(format!(
            "{signal} cannot be caught: choose another, e.g. SIGHUP or SIGUSR2"
        )),
        _ => Ok(signal),
    }
}

/// A pid greater than 1.
fn parse_release_pid(text: &str) -> Result<i32, String> {
    let pid = text
        .parse()
        .map_err(|_| format!("{text:?} is not a pid: give the server's process id"))?;
    check_pid(pid)
}

/// `300s`, `5m`, `1h30m`, `250ms`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|err| format!("{err}: write a duration such as 300s, 5m or 1h30m"))
}

/// As [`parse_duration`], more than zero.
fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err("must be more than zero: write a duration such as 3s".to_owned());
    }
    Ok(duration)
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
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.ports, [8000, 9000]);
        assert_eq!(run.drain.drain_timeout, Duration::from_secs(300));
        assert_eq!(run.drain.accept_for, Duration::ZERO);
        assert_eq!(run.drain.release_when_idle, None);
        assert_eq!(run.kill_after, Duration::from_secs(30));
        assert_eq!(run.command, ["uvicorn", "app:app"]);
    }

    #[test]
    fn daemon_with_a_release_target() {
        let cli = parse(&[
            "daemon",
            "-p",
            "8000",
            "--netns",
            "/run/netns/pod",
            "--release-pidfile",
            "/run/app.pid",
            "--release-signal",
            "INT",
            "--http",
            "127.0.0.1:9090",
        ])
        .unwrap();
        let Command::Daemon(daemon) = cli.command else {
            panic!("not daemon")
        };
        assert_eq!(daemon.release_signal, Signal::SIGINT);
        assert_eq!(daemon.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert_eq!(daemon.release_pidfile, Some(PathBuf::from("/run/app.pid")));
        assert_eq!(parse_signal("15"), Ok(Signal::SIGTERM));
    }

    #[test]
    fn an_accept_window_must_be_shorter_than_the_deadline() {
        let Command::Daemon(daemon) = parse(&[
            "daemon",
            "--port",
            "80",
            "--accept-for",
            "30s",
            "--drain-timeout",
            "30s",
        ])
        .unwrap()
        .command
        else {
            panic!("not daemon")
        };
        let problem = daemon.drain.check().unwrap_err();
        assert!(problem.contains("--accept-for 30s"), "{problem}");
        let Command::Run(run) = parse(&["run", "-p", "80", "--accept-for", "5s", "--", "x"])
            .unwrap()
            .command
        else {
            panic!("not run")
        };
        assert_eq!(run.drain.check(), Ok(()));
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
            &["daemon"],
            &[
                "daemon",
                "--port",
                "80",
                "--release-pid",
                "100",
                "--release-cgroup",
                "/x",
            ],
            &["daemon", "--port", "80", "--release-pid", "1"],
            &["daemon", "--port", "80", "--release-pid", "0"],
            &["daemon", "--port", "80", "--release-pid", "-1"],
            &["daemon", "--port", "80", "--release-signal", "SIGNOPE"],
            &["daemon", "--port", "80", "--http-token-file", "/t"],
            &["drain", "--timeout", "forever"],
            &["drain", "--release-when-idle", "0s"],
            &["daemon", "--port", "80", "--accept-for", "soon"],
            &["resume", "--now"],
        ] {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
    }
}
