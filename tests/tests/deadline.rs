//! The deadline: a connection that never ends is released at --drain-timeout and named, and it
//! flows undisturbed until then.
use std::{net::SocketAddr, time::Duration};

use drainer_harness::{
    clients::echo, drainer::drainer_run, netns::TestNetns, process::monotonic_now, python,
    require_root, script,
};
use nix::sys::signal::Signal;

#[test]
fn a_session_that_never_ends_is_released_at_the_deadline_and_named() {
    require_root();
    let netns = TestNetns::create();
    let python = python().display().to_string();
    let server = script("echo_server.py").display().to_string();
    let mut drainer = drainer_run(
        &netns,
        &[
            "--port",
            "8000",
            "--drain-timeout",
            "2s",
            "--",
            &python,
            &server,
            "127.0.0.1",
            "8000",
        ],
    );
    drainer.wait_for("listening", Duration::from_secs(20));
    let addr: SocketAddr = "127.0.0.1:8000".parse().unwrap();
    let mut endless = netns.connect(addr).unwrap();
    let peer = endless.local_addr().unwrap().to_string();

    drainer.signal(Signal::SIGTERM);
    let started = drainer.wait_for("draining: refusing new connections", Duration::from_secs(5));
    echo(&mut endless, b"during the drain").unwrap();

    let deadline = drainer.wait_for("drain deadline passed", Duration::from_secs(10));
    assert!(
        deadline.text.contains("with 1 connections live"),
        "{}",
        deadline.text
    );
    assert!(
        deadline.text.contains(&peer),
        "straggler {peer} not named: {}",
        deadline.text
    );
    let waited = deadline.at - started.at;
    assert!(
        (1.9..4.0).contains(&waited),
        "released after {waited:.2}s, not at the 2s deadline"
    );
    // The echo server dies of the forwarded SIGTERM: 128 + 15.
    let status = drainer.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(143), "{}", drainer.output());
    assert!(monotonic_now() - started.at < 10.0);
}
