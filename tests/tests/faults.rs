//! Faults: drainer killed, the server crashing mid-drain, a second drainer for the same port, a
//! full table of outbound connections.
//! In each, the port must end up behaving as if drainer had never run, and no established
//! connection may notice.
use std::{io::ErrorKind, net::TcpStream, time::Duration};

use drainer_harness::{
    clients::{connect_many, echo, loopback},
    drainer::{
        drainer_client, drainer_command, drainer_daemon, drainer_run, server_pid, start_drain,
        status_json,
    },
    netns::TestNetns,
    process::Process,
    require_root,
    servers::{echo_server, echo_server_command},
    tempdir::{SYSTEM_PYTHON, TempDir},
};
use nix::{
    sys::signal::{Signal, kill, killpg},
    unistd::Pid,
};

/// `drainer run` guarding the echo server on port 8000; returns it and the server's pid.
fn guarded_echo_server(netns: &TestNetns) -> (Process, Pid) {
    let drainer = drainer_run(
        netns,
        &["--port", "8000"],
        &echo_server_command(&[("127.0.0.1", 8000)]),
    );
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
        .connect(loopback(8000))
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
    let mut held = connect_many(&netns, loopback(8000), 20);
    assert_echoes(&mut held, "while serving");
    kill_drainer_and_check_fail_open(&netns, drainer, server, held);
}

#[test]
fn drainer_killed_while_draining_accepts_again_at_once_and_disturbs_no_connection() {
    require_root();
    let netns = TestNetns::create();
    let (drainer, server) = guarded_echo_server(&netns);
    let mut held = connect_many(&netns, loopback(8000), 20);
    start_drain(&drainer);
    assert_eq!(
        netns.connect(loopback(8000)).unwrap_err().kind(),
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
    let _held = netns.connect(loopback(8000)).unwrap();
    start_drain(&drainer);

    kill(server, Signal::SIGSEGV).unwrap();
    let status = drainer.wait(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(128 + Signal::SIGSEGV as i32),
        "{}",
        drainer.output()
    );

    // Detached: a new server on the port is reachable at once.
    let listener = netns.listen(loopback(8000));
    netns
        .connect(loopback(8000))
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
    let listener = netns.listen(loopback(8000));
    let _held = netns.connect(loopback(8000)).unwrap();

    let second_socket = dir.path().join("second.sock");
    let mut command = drainer_command(
        &netns,
        &[
            "daemon",
            "--port",
            "9000",
            "--port",
            "8000",
            "--control-socket",
        ],
    );
    command.arg(&second_socket);
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
        .connect(loopback(8000))
        .expect("the first drainer stopped accepting");
    drop(listener);
}

/// Records of outbound connections from a guarded port the kernel side can hold
/// (drainer-ebpf/src/tracking.rs, `OUTBOUND`).
const OUTBOUND_RECORDS: u32 = 65_536;
/// Processes sharing the flood: one process may not hold them all (RLIMIT_NOFILE).
const FLOOD_PROCESSES: u32 = 4;
/// The unprivileged user who floods.
const NOBODY: &str = "65534";

/// Any local user can bind the guarded port on another local address and connect out from it:
/// enough of those fill drainer's table of outbound connections. They must neither make the count
/// unknown (holding every drain to its deadline) nor count as the server's connections.
#[test]
fn outbound_connections_another_user_makes_from_the_guarded_port_neither_blind_nor_hold_a_drain() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("full-map");
    let socket = dir.path().join("control.sock");
    let socket = socket.to_str().unwrap();
    let _server = echo_server(&netns, &[("127.0.0.1", 8000)]);
    // Far past the test: the drain must end on its count, not on this.
    let daemon = drainer_daemon(
        &netns,
        &[
            "--port",
            "8000",
            "--control-socket",
            socket,
            "--drain-timeout",
            "1h",
        ],
    );
    let mut held = netns.connect(loopback(8000)).unwrap();

    // Records are made only while a drain follows connections.
    let (code, _, stderr) = drainer_client(&["drain", "--socket", socket]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(status_json(socket.as_ref())["count_exact"], true);

    // Outbound connections from the guarded port each take a record: make a few more than fit.
    let per_process = OUTBOUND_RECORDS / FLOOD_PROCESSES + 1;
    // Each flood's listener holds its handshakes in its backlog, which net.core.somaxconn caps.
    netns
        .run(|| {
            std::fs::write(
                "/proc/sys/net/core/somaxconn",
                (per_process + 16).to_string(),
            )
        })
        .expect("raising net.core.somaxconn in the test namespace");
    // Run by nobody, who may not reach the clone or the test virtualenv.
    let flood_script = dir.script_copy("outbound_flood.py");
    let floods: Vec<Process> = (0..FLOOD_PROCESSES)
        .map(|k| {
            let mut command = netns.command("setpriv");
            command
                .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"])
                .arg(SYSTEM_PYTHON)
                .arg(&flood_script)
                .args([
                    "8000".to_owned(),
                    (9000 + k).to_string(),
                    (k * per_process).to_string(),
                    per_process.to_string(),
                ]);
            Process::spawn("outbound flood", command)
        })
        .collect();
    // Bounds only a flood that never completes; how long it takes does not matter.
    for flood in &floods {
        flood.wait_for(&format!("holding {per_process}"), Duration::from_secs(600));
    }

    let warning = daemon.wait_for("could not be recorded", Duration::from_secs(20));
    assert!(
        warning
            .text
            .contains("counting live connections from the socket table"),
        "{}",
        warning.text
    );
    let status = status_json(socket.as_ref());
    assert_eq!(status["state"], "draining", "{status}");
    assert_eq!(status["count_exact"], true, "{status}");
    assert_eq!(
        status["live"], 1,
        "the flood counted as the server's: {status}"
    );
    assert_eq!(status["ports"][0]["untracked"], 0, "{status}");

    // The only server connection closes: the drain ends on it, flood or not.
    echo(&mut held, b"during the drain").unwrap();
    drop(held);
    assert_eq!(
        netns.connect(loopback(8000)).unwrap_err().kind(),
        ErrorKind::ConnectionRefused
    );
    let (code, _, stderr) = drainer_client(&["drain", "--wait", "--socket", socket]);
    assert_eq!(code, 0, "{stderr}");
    daemon.wait_for("drained", Duration::from_secs(20));
    drop(floods);
}
