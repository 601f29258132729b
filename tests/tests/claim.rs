//! The port claim against a squatter: an unprivileged process holding the claim's name neither
//! stops drainer nor hides one drainer from another. (A second drainer while the first holds the
//! name is in faults.rs.)
use std::{io::ErrorKind, process::Command, time::Duration};

use drainer_harness::{
    clients::loopback,
    drainer::{drainer_command, drainer_daemon, drainer_run, live_field, start_drain},
    netns::TestNetns,
    process::Process,
    python, require_root, script,
    servers::echo_server_command,
    tempdir::TempDir,
};

/// The uid the squatter runs as: nobody, an ordinary unprivileged user.
const SQUATTER_UID: u32 = 65534;

/// A process of uid 65534 in `netns` doing what `args` say to abstract unix names (`--bind NAME`,
/// `--fill NAME`), and its pid.
fn squat(netns: &TestNetns, args: &[&str]) -> (Process, i32) {
    let mut command = netns.command(python());
    command
        .arg(script("squatter.py"))
        .arg(SQUATTER_UID.to_string())
        .args(args);
    let squatter = Process::spawn("squatter", command);
    let line = squatter.wait_for("squatting", Duration::from_secs(20));
    let pid = line
        .text
        .split("pid=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {:?}", line.text));
    (squatter, pid)
}

#[test]
fn a_claim_squatted_by_an_unprivileged_user_does_not_stop_drainer() {
    require_root();
    let netns = TestNetns::create();
    let (_squatter, squatter_pid) = squat(&netns, &["--bind", "drainer/port/8000"]);

    let mut drainer = drainer_run(
        &netns,
        &["--port", "8000"],
        &echo_server_command(&[("127.0.0.1", 8000)]),
    );
    drainer.wait_for("listening", Duration::from_secs(20));
    let warning = drainer.wait_for("@drainer/port/8000 held by", Duration::from_secs(5));
    assert!(
        warning
            .text
            .contains(&format!("uid {SQUATTER_UID} (pid {squatter_pid})"))
            && warning.text.contains("not a drainer"),
        "{}",
        warning.text
    );

    // Guarding as ever: the connection is counted, a new one refused, the release follows it.
    let held = netns.connect(loopback(8000)).unwrap();
    assert_eq!(live_field(&start_drain(&drainer).text), 1);
    let refused = netns
        .connect(loopback(8000))
        .expect_err("a new connection was accepted while draining");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    drop(held);
    drainer.wait_for("drained: no live connections", Duration::from_secs(5));
    drainer.wait(Duration::from_secs(10));
}

/// `drainer daemon --port 8000` with its own control socket in `dir`, run to completion.
fn second_drainer(netns: &TestNetns, dir: &TempDir, name: &str) -> Process {
    let mut command: Command = drainer_command(netns, &["daemon", "--port", "8000"]);
    command
        .arg("--control-socket")
        .arg(dir.path().join(format!("{name}.sock")));
    let mut second = Process::spawn(name, command);
    assert_eq!(
        second.wait(Duration::from_secs(10)).code(),
        Some(1),
        "{}",
        second.output()
    );
    second
}

#[test]
fn a_drainer_behind_a_squatter_still_refuses_a_second_drainer_and_is_found_once_the_squatter_leaves()
 {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("claim-squatted");
    let (mut squatter, _) = squat(&netns, &["--bind", "drainer/port/8000"]);
    let first_socket = dir.path().join("first.sock");
    let first = drainer_daemon(
        &netns,
        &[
            "--port",
            "8000",
            "--control-socket",
            first_socket.to_str().unwrap(),
        ],
    );
    let refusal = format!("already guarded by another drainer (pid {})", first.pid());

    // The squatter still holds the preferred name: the second finds the first under its own.
    let second = second_drainer(&netns, &dir, "second");
    assert!(second.output().contains(&refusal), "{}", second.output());

    // The preferred name is free again: the third takes it, and still finds the first.
    squatter.terminate(Duration::from_secs(5));
    let third = second_drainer(&netns, &dir, "third");
    assert!(third.output().contains(&refusal), "{}", third.output());
    assert!(
        !third.output().contains("not a drainer"),
        "{}",
        third.output()
    );
    drop(first);
}

/// A claim is found by its owner, not by connecting to it: a squatter who fills the first
/// drainer's backlog, so no connection to its claim can be made, does not hide it.
#[test]
fn a_drainer_whose_claim_no_one_can_connect_to_still_refuses_a_second_drainer() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("claim-filled");
    let first_socket = dir.path().join("first.sock");
    let _first = drainer_daemon(
        &netns,
        &[
            "--port",
            "8000",
            "--control-socket",
            first_socket.to_str().unwrap(),
        ],
    );
    let (_squatter, _) = squat(&netns, &["--fill", "drainer/port/8000"]);

    let second = second_drainer(&netns, &dir, "second");
    assert!(
        second
            .output()
            .contains("already guarded by another drainer: stop that one first"),
        "{}",
        second.output()
    );
}
