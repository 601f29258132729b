//! Faults: drainer killed, the server crashing mid-drain, a second drainer for the same port.
//! In each, the port must end up behaving as if drainer had never run, and no established
//! connection may notice.
use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use drainer_integration::{
    TempDir, drainer_bin, drainer_daemon, drainer_run, echo, echo_server_command, netns::TestNetns,
    process::Process, require_root, server_pid, status_json,
};
use nix::{
    sys::signal::{Signal, kill, killpg},
    unistd::Pid,
};

fn addr() -> SocketAddr {
    "127.0.0.1:8000".parse().unwrap()
}

/// `drainer run` guarding the echo server on port 8000; returns it and the server's pid.
fn guarded_echo_server(netns: &TestNetns) -> (Process, Pid) {
    let server = echo_server_command(&[("127.0.0.1", 8000)]);
    let mut args = vec!["--port", "8000", "--"];
    args.extend(server.iter().map(String::as_str));
    let drainer = drainer_run(netns, &args);
    drainer.wait_for("listening", Duration::from_secs(20));
    let pid = server_pid(&drainer);
    (drainer, pid)
}

fn assert_echoes(streams: &mut [TcpStream], after: &str) {
    for (i, stream) in streams.iter_mut().enumerate() {
        echo(stream, format!("still here {i}").as_bytes())
            .unwrap_or_else(|err| panic!("connection {i} broke {after}: {err}"));
    }
}

fn kill_drainer_and_check_fail_open(
    netns: &TestNetns,
    mut drainer: Process,
    server: Pid,
    mut held: Vec<TcpStream>,
) {
    drainer.signal(Signal::SIGKILL);
    drainer.wait(Duration::from_secs(5));
    // The kernel detached drainer's programs with the process: new connections are accepted at
    // once, and the established ones never noticed.
    let mut fresh = netns
        .connect(addr())
        .expect("the port refused a connection after drainer died");
    echo(&mut fresh, b"new").expect("a new connection after drainer died");
    assert_echoes(&mut held, "when drainer was killed");
    killpg(server, Signal::SIGKILL).unwrap();
}

#[test]
fn drainer_killed_while_serving_leaves_the_port_and_its_connections_as_they_were() {
    require_root();
    let netns = TestNetns::create();
    let (drainer, server) = guarded_echo_server(&netns);
    let mut held: Vec<TcpStream> = (0..20).map(|_| netns.connect(addr()).unwrap()).collect();
    assert_echoes(&mut held, "while serving");
    kill_drainer_and_check_fail_open(&netns, drainer, server, held);
}

#[test]
fn drainer_killed_while_draining_accepts_again_at_once_and_disturbs_no_connection() {
    require_root();
    let netns = TestNetns::create();
    let (drainer, server) = guarded_echo_server(&netns);
    let mut held: Vec<TcpStream> = (0..20).map(|_| netns.connect(addr()).unwrap()).collect();
    drainer.signal(Signal::SIGTERM);
    drainer.wait_for("draining: refusing new connections", Duration::from_secs(5));
    assert_eq!(
        netns.connect(addr()).unwrap_err().kind(),
        ErrorKind::ConnectionRefused
    );
    assert_echoes(&mut held, "while draining");
    kill_drainer_and_check_fail_open(&netns, drainer, server, held);
}

#[test]
fn the_server_crashing_mid_drain_ends_drainer_with_its_status_and_detaches() {
    require_root();
    let netns = TestNetns::create();
    let (mut drainer, server) = guarded_echo_server(&netns);
    let _held = netns.connect(addr()).unwrap();
    drainer.signal(Signal::SIGTERM);
    drainer.wait_for("draining: refusing new connections", Duration::from_secs(5));

    kill(server, Signal::SIGSEGV).unwrap();
    let status = drainer.wait(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(128 + Signal::SIGSEGV as i32),
        "{}",
        drainer.output()
    );

    // Detached: a new server on the port is reachable at once.
    let listener = netns.listen(addr());
    netns
        .connect(addr())
        .expect("the port still refused connections after drainer exited");
    drop(listener);
}

#[test]
fn a_second_drainer_for_the_same_port_and_namespace_is_refused_and_the_first_keeps_going() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("claim");
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
    let listener = netns.listen(addr());
    let _held = netns.connect(addr()).unwrap();

    let second_socket = dir.path().join("second.sock");
    let mut command = netns.command(drainer_bin());
    command
        .args([
            "daemon",
            "--port",
            "9000",
            "--port",
            "8000",
            "--control-socket",
        ])
        .arg(&second_socket);
    let mut second = Process::spawn("second drainer", command);
    assert_eq!(second.wait(Duration::from_secs(10)).code(), Some(1));
    let refusal = format!(
        "port 8000 in net:[{}]",
        std::fs::metadata(netns.path())
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap()
    );
    let output = second.output();
    assert!(
        output.contains(&refusal)
            && output.contains(&format!(
                "already guarded by another drainer (pid {})",
                first.pid()
            )),
        "{output}"
    );

    // The first neither lost its count nor stopped accepting.
    let status = status_json(&first_socket);
    assert_eq!(status["state"], "serving");
    assert_eq!(status["live"], 1);
    netns
        .connect(addr())
        .expect("the first drainer stopped accepting");
    drop(listener);
}
