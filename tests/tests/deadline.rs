//! The deadline: a connection that never ends is released at --drain-timeout and named, and it
//! flows undisturbed until then.
use std::time::Duration;

use drainer_harness::{
    clients::{echo, loopback},
    drainer::{drainer_run, start_drain},
    netns::TestNetns,
    process::monotonic_now,
    require_root,
    servers::echo_server_command,
};

#[test]
fn a_session_that_never_ends_is_released_at_the_deadline_and_named() {
    require_root();
    let netns = TestNetns::create();
    let mut drainer = drainer_run(
        &netns,
        &["--port", "8000", "--drain-timeout", "2s"],
        &echo_server_command(&[("127.0.0.1", 8000)]),
    );
    drainer.wait_for("listening", Duration::from_secs(20));
    let mut endless = netns.connect(loopback(8000)).unwrap();
    let peer = endless.local_addr().unwrap().to_string();

    let started = start_drain(&drainer);
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
