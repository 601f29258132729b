//! The drainer binary under test: `run`, `daemon` and the client commands, their logs and status.
use std::{
    ffi::OsStr,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};

use crate::{
    drainer_bin,
    netns::TestNetns,
    process::{Line, Process},
};

/// `drainer ARGS` inside `netns`, logging at info, not started yet.
pub fn drainer_command(netns: &TestNetns, args: &[&str]) -> Command {
    let mut command = netns.command(drainer_bin());
    command.args(args).env("DRAINER_LOG", "info");
    command
}

/// `drainer run OPTIONS -- SERVER...` inside `netns`.
pub fn drainer_run(netns: &TestNetns, options: &[&str], server: &[impl AsRef<OsStr>]) -> Process {
    let mut command = drainer_command(netns, &["run"]);
    command.args(options).arg("--").args(server);
    Process::spawn("drainer", command)
}

/// `drainer daemon ARGS` inside `netns`, once its control socket is up.
pub fn drainer_daemon(netns: &TestNetns, args: &[&str]) -> Process {
    let mut command = drainer_command(netns, &["daemon"]);
    command.args(args);
    let daemon = Process::spawn("drainer daemon", command);
    daemon.wait_for("control socket", Duration::from_secs(20));
    daemon
}

/// Runs a drainer client command (`status`, `drain`, ...) to completion: (exit code, stdout, stderr).
pub fn drainer_client(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(drainer_bin())
        .args(args)
        .output()
        .expect("run drainer");
    (
        output.status.code().expect("the client died of a signal"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Starts a drainer client command (`drain --wait`, ...) that runs on while the test goes on.
pub fn drainer_client_process(args: &[&str]) -> Process {
    let mut command = Command::new(drainer_bin());
    command.args(args);
    Process::spawn(&format!("drainer {}", args.join(" ")), command)
}

/// Reads `drainer status --json` through `socket` until `wanted` holds for it; returns it.
/// Fails after `timeout`, showing the last status.
pub fn wait_for_status(
    socket: &Path,
    what: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
    timeout: Duration,
) -> serde_json::Value {
    let timeout = crate::patience(timeout);
    let deadline = Instant::now() + timeout;
    loop {
        let status = status_json(socket);
        if wanted(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {what} within {timeout:?}; last: {status}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `drainer status --json` through `socket`.
pub fn status_json(socket: &Path) -> serde_json::Value {
    let (code, stdout, stderr) =
        drainer_client(&["status", "--json", "--socket", socket.to_str().unwrap()]);
    assert_eq!(code, 0, "drainer status failed: {stderr}");
    serde_json::from_str(&stdout).expect("status JSON")
}

/// Sends SIGTERM to `drainer run`; returns the line that says the drain began (refusing).
pub fn start_drain(drainer: &Process) -> Line {
    drainer.signal(Signal::SIGTERM);
    drainer.wait_for("draining: refusing new connections", Duration::from_secs(5))
}

/// Sends SIGTERM to `drainer run --accept-for D`; returns the line that says the drain began
/// (readiness fails, new connections still accepted).
pub fn start_drain_accepting(drainer: &Process) -> Line {
    drainer.signal(Signal::SIGTERM);
    drainer.wait_for("draining: readiness fails now", Duration::from_secs(5))
}

/// The pid of the server `drainer run` started, from its "started … pid=N" log line.
pub fn server_pid(drainer: &Process) -> Pid {
    drainer
        .wait_for_match(
            |line| line.contains("started") && line.contains("pid="),
            Duration::from_secs(5),
        )
        .and_then(|line| {
            line.text
                .split("pid=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .map(Pid::from_raw)
        .expect("drainer logged no server pid")
}

/// The `live=N` field of a drainer log line.
pub fn live_field(line: &str) -> i64 {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("live="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no live=N in {line:?}"))
}
