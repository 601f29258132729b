//! drainer as the server's supervisor: signals, exit statuses and the kill timer.
use std::{io::ErrorKind, time::Duration};

use drainer_harness::{
    clients::loopback,
    drainer::{drainer_run, start_drain},
    netns::TestNetns,
    process::Process,
    require_root,
    servers::signal_server_command,
};
use nix::sys::signal::Signal;

/// `drainer run --port 8000 DRAINER_ARGS` guarding the signal server on port 8000, started with
/// `server_args`, once it listens.
fn guarded_signal_server(
    netns: &TestNetns,
    drainer_args: &[&str],
    server_args: &[&str],
) -> Process {
    let mut options = vec!["--port", "8000"];
    options.extend(drainer_args);
    let drainer = drainer_run(netns, &options, &signal_server_command(8000, server_args));
    drainer.wait_for("listening", Duration::from_secs(20));
    drainer
}

#[test]
fn other_signals_are_forwarded_and_the_stop_signal_is_held_back() {
    require_root();
    let netns = TestNetns::create();
    let mut drainer = guarded_signal_server(&netns, &[], &[]);
    let held = netns.connect(loopback(8000)).unwrap();

    for (signal, name) in [
        (Signal::SIGHUP, "got SIGHUP"),
        (Signal::SIGUSR1, "got SIGUSR1"),
        (Signal::SIGUSR2, "got SIGUSR2"),
    ] {
        drainer.signal(signal);
        drainer.wait_for(name, Duration::from_secs(5));
    }
    start_drain(&drainer);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !drainer.output().contains("got SIGTERM"),
        "SIGTERM reached the server while a connection was live"
    );
    drop(held);
    drainer.wait_for("got SIGTERM", Duration::from_secs(5));
    assert_eq!(drainer.wait(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn a_second_stop_signal_releases_at_once() {
    require_root();
    let netns = TestNetns::create();
    let mut drainer = guarded_signal_server(&netns, &["--drain-timeout", "300s"], &[]);
    let _held = netns.connect(loopback(8000)).unwrap();
    start_drain(&drainer);
    drainer.signal(Signal::SIGINT);
    drainer.wait_for(
        "second stop signal: releasing now with 1 connections live",
        Duration::from_secs(5),
    );
    // The server hears the signal that started the drain.
    drainer.wait_for("got SIGTERM", Duration::from_secs(5));
    assert_eq!(drainer.wait(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn a_server_that_ignores_its_stop_signal_is_killed_after_kill_after() {
    require_root();
    let netns = TestNetns::create();
    let mut drainer = guarded_signal_server(&netns, &["--kill-after", "1s"], &["--ignore-term"]);
    drainer.signal(Signal::SIGTERM);
    let released = drainer.wait_for("drained: no live connections", Duration::from_secs(5));
    drainer.wait_for("got SIGTERM", Duration::from_secs(5));
    let killed = drainer.wait_for("did not exit within --kill-after", Duration::from_secs(5));
    let waited = killed.at - released.at;
    assert!(
        (0.9..3.0).contains(&waited),
        "killed {waited:.2}s after release, not 1s"
    );
    assert_eq!(drainer.wait(Duration::from_secs(10)).code(), Some(128 + 9));
}

#[test]
fn a_server_that_exits_on_its_own_passes_its_status_through() {
    require_root();
    let netns = TestNetns::create();
    let mut drainer = guarded_signal_server(&netns, &[], &["--exit-after", "0.5", "7"]);
    drainer.wait_for("the server exited with exit code 7", Duration::from_secs(5));
    assert_eq!(drainer.wait(Duration::from_secs(5)).code(), Some(7));
    // Detached: the port is no longer guarded, so nothing refuses a connection there; with no
    // server left it is simply closed.
    let err = netns.connect(loopback(8000)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}
