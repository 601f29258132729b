//! The CLI side of the control socket: `drainer status`, `drainer drain`, `drainer release`.
use std::{
    cell::Cell,
    io::{BufRead as _, BufReader, IsTerminal as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};

use drainer_common::protocol::{IdleConnection, Outcome, Reply, Request, Status};

use crate::system::systemd::Systemd;

/// `drainer drain --wait` exit codes.
pub const EXIT_DRAINED: i32 = 0;
pub const EXIT_DEADLINE: i32 = 3;
pub const EXIT_RELEASED_EARLY: i32 = 4;
pub const EXIT_RESUMED: i32 = 5;

struct Connection {
    reader: BufReader<UnixStream>,
    /// Why the request could not be sent, if it could not: the daemon answers a caller it
    /// refuses and closes at once, perhaps before the request is out, and that answer is
    /// still there to read.
    unsent: Option<std::io::Error>,
}

impl Connection {
    fn open(socket: &Path, request: &Request) -> Result<Self> {
        let mut stream = UnixStream::connect(socket).with_context(|| {
            format!(
                "cannot reach the drainer daemon at {} (is `drainer daemon` running?)",
                socket.display()
            )
        })?;
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        let unsent = stream.write_all(&line).err();
        Ok(Self {
            reader: BufReader::new(stream),
            unsent,
        })
    }

    fn next(&mut self) -> Result<Reply> {
        let mut line = String::new();
        let read = self.reader.read_line(&mut line);
        if let Some(err) = self.unsent.take()
            && !matches!(read, Ok(n) if n > 0)
        {
            return Err(err).context("sending the request");
        }
        if read.context("reading the daemon's reply")? == 0 {
            bail!("the daemon closed the connection without a reply");
        }
        match serde_json::from_str(&line).context("the daemon's reply is not valid")? {
            Reply::Error { message } => Err(anyhow!("{message}")),
            reply => Ok(reply),
        }
    }
}

pub fn status(socket: &Path, json: bool) -> Result<i32> {
    let status = ask_status(socket, &Request::Status {})?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", describe(&status));
    }
    Ok(0)
}

pub fn release(socket: &Path) -> Result<i32> {
    let status = ask_status(socket, &Request::Release {})?;
    eprintln!("released with {} connections live", status.live);
    Ok(0)
}

pub fn resume(socket: &Path) -> Result<i32> {
    let status = ask_status(socket, &Request::Resume {})?;
    eprintln!("resumed: serving again, {} live", status.live);
    Ok(0)
}

/// Sends a request the daemon answers with its status once carried out.
fn ask_status(socket: &Path, request: &Request) -> Result<Status> {
    let mut connection = Connection::open(socket, request)?;
    match connection.next()? {
        Reply::Status(status) => Ok(status),
        other => bail!("unexpected reply to {request:?}: {other:?}"),
    }
}

/// `drainer drain`: what the request asks of the daemon; what it leaves out, the daemon's own
/// settings decide.
pub struct DrainOptions {
    pub socket: PathBuf,
    /// Follow the drain to its release, showing progress.
    pub wait: bool,
    pub timeout: Option<Duration>,
    pub accept_for: Option<Duration>,
    pub release_when_idle: Option<Duration>,
}

pub fn drain(options: &DrainOptions) -> Result<i32> {
    let seconds = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let request = Request::Drain {
        wait: options.wait,
        timeout_seconds: seconds(options.timeout),
        accept_for_seconds: seconds(options.accept_for),
        release_when_idle_seconds: seconds(options.release_when_idle),
    };
    let mut connection = Connection::open(&options.socket, &request)?;
    if !options.wait {
        let Reply::Status(status) = connection.next()? else {
            bail!("unexpected reply to drain")
        };
        eprintln!("draining: {} live", status.live);
        return Ok(0);
    }
    let mut display = Display::new();
    let stop_timeout = StopTimeout::new();
    loop {
        match connection.next()? {
            Reply::Progress(status) => {
                display.progress(&status);
                stop_timeout.hold_off(&status);
            }
            Reply::Released(status) => return Ok(display.released(&status)),
            Reply::Resumed(status) => return Ok(display.resumed(&status)),
            _ => bail!("unexpected reply while waiting"),
        }
    }
}

/// The stop timeout of the unit `drain --wait` is the `ExecStop=` of, held off for as long as the
/// drain may last. In the companion shape systemd stops the app's unit, whose `TimeoutStopSec=`
/// would otherwise cut a drain longer than it; the daemon, in a unit of its own, cannot extend
/// that one. systemd hands `ExecStop=` a NOTIFY_SOCKET only when the unit has `NotifyAccess=all`;
/// without one this does nothing.
struct StopTimeout {
    systemd: Systemd,
    extended: Cell<bool>,
}

impl StopTimeout {
    /// After the drain's deadline, the app still has its own shutdown to do once drainer
    /// releases it.
    const APP_SHUTDOWN: Duration = Duration::from_secs(30);

    fn new() -> Self {
        Self {
            systemd: Systemd::from_env(),
            extended: Cell::new(false),
        }
    }

    /// Called with each progress report (at least every 500 ms): extends the timeout to the
    /// drain's deadline at the first, then renews each window before it ends.
    fn hold_off(&self, status: &Status) {
        let now = Instant::now();
        if self.systemd.renew_at().is_some() {
            self.systemd.renew(now);
        } else if let Some(left) = status.deadline_left_seconds
            && !self.extended.replace(true)
        {
            self.systemd
                .extend_timeout(Duration::from_secs_f64(left.max(0.0)) + Self::APP_SHUTDOWN);
        }
    }
}

/// A progress bar on a terminal, plain lines otherwise. A plain line is written when the count
/// changes and at most every [`Display::QUIET_FOR`] otherwise: reports come every 500 ms, and
/// `ExecStop=` or a preStop hook logs each line for as long as the drain lasts.
struct Display {
    bar: Option<ProgressBar>,
    /// What the last plain line said of the count, and when it was written.
    last_line: Option<(String, Instant)>,
}

impl Display {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} closed  {msg}")
                    .expect("valid template")
                    .progress_chars("█▉ "),
            );
            bar
        });
        Self {
            bar,
            last_line: None,
        }
    }

    /// The longest a plain-line display stays silent while the count does not change.
    const QUIET_FOR: Duration = Duration::from_secs(10);

    fn progress(&mut self, status: &Status) {
        let line = progress_line(status);
        match &self.bar {
            Some(bar) => {
                let start = status
                    .live_at_drain_start
                    .unwrap_or(status.live)
                    .max(status.live)
                    .max(0) as u64;
                // Message first: setting the position redraws, with whatever message is set.
                bar.set_message(line);
                bar.set_length(start);
                bar.set_position(start.saturating_sub(status.live.max(0) as u64));
            }
            None => {
                let count = connections_live(status);
                let now = Instant::now();
                let due = self.last_line.as_ref().is_none_or(|(last, at)| {
                    *last != count || now.duration_since(*at) >= Self::QUIET_FOR
                });
                if due {
                    eprintln!("{line}");
                    self.last_line = Some((count, now));
                }
            }
        }
    }

    fn resumed(&mut self, status: &Status) -> i32 {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!(
            "resumed before release: serving again with {}",
            connections_live(status)
        );
        EXIT_RESUMED
    }

    fn released(&mut self, status: &Status) -> i32 {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let elapsed = status.drain_elapsed_seconds.unwrap_or(0.0);
        match status.outcome {
            Some(Outcome::DeadlinePassed) => {
                eprintln!(
                    "deadline passed after {elapsed:.1}s with {}",
                    connections_live(status)
                );
                EXIT_DEADLINE
            }
            Some(Outcome::ReleasedEarly) => {
                eprintln!(
                    "released early after {elapsed:.1}s with {}",
                    connections_live(status)
                );
                EXIT_RELEASED_EARLY
            }
            Some(Outcome::DrainedToIdle) => {
                eprintln!(
                    "drained in {elapsed:.1}s: the {} connection(s) left were idle",
                    status.live
                );
                EXIT_DRAINED
            }
            _ => {
                eprintln!("drained in {elapsed:.1}s");
                EXIT_DRAINED
            }
        }
    }
}

fn progress_line(status: &Status) -> String {
    format!(
        "draining: {}, {:.1}s elapsed, deadline in {:.0}s",
        connections_live(status),
        status.drain_elapsed_seconds.unwrap_or(0.0),
        status.deadline_left_seconds.unwrap_or(0.0)
    )
}

/// `3 connections live`, or that the count is unknown.
fn connections_live(status: &Status) -> String {
    if status.count_exact {
        format!("{} connections live", status.live)
    } else {
        format!("the live count unknown ({} counted)", status.live)
    }
}

/// The live count, where it comes from when not from the counters, or why it is unknown.
fn live(status: &Status) -> String {
    if !status.count_exact {
        let untracked: u64 = status.ports.iter().map(|p| p.untracked).sum();
        return format!(
            "unknown ({} counted, but {untracked} connection(s) could not be recorded; a drain \
             runs to its deadline)",
            status.live
        );
    }
    if status.missed_state_changes > 0 {
        return format!(
            "{} (from the socket table: the tracepoint missed {} TCP state change(s))",
            status.live, status.missed_state_changes
        );
    }
    status.live.to_string()
}

fn describe(status: &Status) -> String {
    let mut text = format!(
        "state: {}\nlive connections: {}\n",
        status.state.as_str(),
        live(status)
    );
    if let Some(start) = status.live_at_drain_start {
        text.push_str(&format!("live at drain start: {start}\n"));
    }
    if let Some(elapsed) = status.drain_elapsed_seconds {
        text.push_str(&format!("drain elapsed: {elapsed:.1}s\n"));
    }
    if let Some(left) = status.accept_window_left_seconds {
        text.push_str(&format!(
            "accepting new connections for {left:.1}s more, then refusing\n"
        ));
    }
    if let (Some(idle_for), Some(idle)) = (status.release_when_idle_seconds, status.idle_live) {
        text.push_str(&format!(
            "idle for {idle_for:.1}s or more: {idle} (released once all are)\n"
        ));
        if !status.active.is_empty() {
            text.push_str("still active, holding the drain:\n");
            for connection in &status.active {
                text.push_str(&format!("  {}\n", connection_line(connection)));
            }
        }
    }
    if let Some(left) = status.deadline_left_seconds {
        text.push_str(&format!("deadline in: {left:.1}s\n"));
    }
    text.push_str(&format!("refused connections: {}\n", status.refused));
    for port in &status.ports {
        text.push_str(&format!(
            "port {}: {} live, {} refused\n",
            port.port, port.live, port.refused
        ));
    }
    if !status.most_idle.is_empty() {
        text.push_str("most idle live connections:\n");
        for connection in &status.most_idle {
            text.push_str(&format!("  {}\n", connection_line(connection)));
        }
    }
    text
}

/// `peer → :port idle 1.5s`.
fn connection_line(connection: &IdleConnection) -> String {
    let idle = connection
        .idle_seconds
        .map_or(String::new(), |s| format!(" idle {s:.1}s"));
    format!("{} → :{}{idle}", connection.peer, connection.port)
}
