//! Nothing a local user or an HTTP client does can end a drain: idle connections by the
//! thousand against the control socket and the HTTP listener of a daemon short of descriptors,
//! the signals a daemon does not stop on, and what is found at the control socket's path or in
//! the token file at start-up.
use std::{
    fs,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use drainer_harness::{
    clients::{connect_many, http_request, loopback},
    drainer::{drainer_client_process, drainer_command, status_json, wait_for_status},
    drainer_bin,
    netns::TestNetns,
    patience,
    pressure::{as_nobody, idle_flood, limit_descriptors},
    process::Process,
    require_root,
    servers::{echo_server, signal_server},
    tempdir::{SYSTEM_PYTHON, TempDir},
};
use nix::sys::signal::Signal;

const TOKEN: &str = "a-long-random-token-for-the-tests";
/// Far fewer descriptors than the flood opens connections: enough for drainer's own (about 35)
/// and a few hundred connections.
const DESCRIPTORS: u64 = 256;
const FLOOD: usize = 2000;

/// `drainer daemon ARGS` in `netns` with both RLIMIT_NOFILE limits at `descriptors`, once its
/// control socket is up.
fn daemon_with_descriptors(netns: &TestNetns, args: &[&str], descriptors: u64) -> Process {
    let mut command = drainer_command(netns, &["daemon"]);
    command.args(args);
    limit_descriptors(&mut command, descriptors);
    let daemon = Process::spawn("drainer daemon", command);
    daemon.wait_for("control socket", Duration::from_secs(20));
    daemon
}

/// `drainer status --json` through `socket`, failing (with the daemon's log) if it does not
/// answer within 30 s.
fn status_of(socket: &Path, daemon: &Process) -> serde_json::Value {
    let mut status = Command::new(drainer_bin())
        .args(["status", "--json", "--socket", socket.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + patience(Duration::from_secs(30));
    while status.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = status.kill();
            panic!(
                "drainer status got no answer in 30s; daemon:\n{}",
                daemon.output()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = status.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "drainer status failed: {}\ndaemon:\n{}",
        String::from_utf8_lossy(&output.stderr),
        daemon.output()
    );
    serde_json::from_slice(&output.stdout).expect("status JSON")
}

fn open_descriptors(process: &Process) -> usize {
    fs::read_dir(format!("/proc/{}/fd", process.pid()))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

#[test]
fn idle_connections_by_the_thousand_from_an_unprivileged_user_do_not_stop_the_release() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("flood");
    let socket = dir.path().join("drainer.sock");
    let socket_arg = socket.to_str().unwrap();
    let _server = echo_server(&netns, &[("127.0.0.1", 8000)]);
    let app = signal_server(&netns, 8001);
    let app_pid = app.pid().to_string();
    let mut daemon = daemon_with_descriptors(
        &netns,
        &[
            "--port",
            "8000",
            "--control-socket",
            socket_arg,
            "--http",
            "127.0.0.1:9090",
            "--release-pid",
            &app_pid,
            "--drain-timeout",
            "300s",
        ],
        DESCRIPTORS,
    );
    let held = connect_many(&netns, loopback(8000), 3);
    let mut waiter = drainer_client_process(&["drain", "--wait", "--socket", socket_arg]);
    wait_for_status(
        &socket,
        "a drain holding 3 connections",
        |s| s["state"] == "draining" && s["live"] == 3,
        Duration::from_secs(20),
    );

    let mut flood = idle_flood(&netns, &dir, FLOOD, &socket, loopback(9090));
    // The flood runs a while: refused control connections are replaced as fast as drainer
    // closes them, and the HTTP slots fill up with heads that never come, twice over (a head
    // gets 5 s), while the connections drainer answered stay open on the flood's side.
    flood.wait_for("unix open=", Duration::from_secs(10));
    let busiest = (0..120)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            open_descriptors(&daemon)
        })
        .max()
        .unwrap();

    // The last connections close: the drain completes under the flood.
    drop(held);
    let output = waiter.wait(Duration::from_secs(60));
    assert!(
        output.success(),
        "drain --wait did not end drained: {output}\n{}\ndaemon:\n{}",
        waiter.output(),
        daemon.output()
    );
    app.wait_for("got SIGTERM", Duration::from_secs(10));
    // Root is still served while the flood goes on.
    let status = status_of(&socket, &daemon);
    assert_eq!(status["state"], "released", "{status}");
    assert_eq!(status["outcome"], "drained", "{status}");
    let flood_report = flood.output();
    flood.terminate(Duration::from_secs(5));
    let last_report = flood_report.lines().last().unwrap_or_default();
    // "unix open=… replaced=N failed=…; tcp open=… replaced=N failed=…"
    let replaced: Vec<usize> = last_report
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("replaced=")?.parse().ok())
        .collect();
    let [unix_answered, tcp_answered] = replaced[..] else {
        panic!("no flood report:\n{flood_report}");
    };
    // The flood pressed: the HTTP listener held all its slots at once, and answered them.
    let slots: usize = daemon
        .wait_for("connections at once", Duration::from_secs(1))
        .text
        .split("serves ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("the number of connections each listener serves");
    assert!(
        busiest >= slots,
        "drainer held at most {busiest} descriptors: the flood never filled the {slots} HTTP slots"
    );
    assert!(
        tcp_answered >= slots && unix_answered >= FLOOD,
        "drainer answered too few: {last_report}"
    );
    eprintln!(
        "drainer's busiest descriptor count under the flood: {busiest} ({slots} slots per listener)"
    );
    eprintln!("flood: {last_report}");

    // Still running: a drain a request started leaves the daemon up, refusing, until signalled.
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait(Duration::from_secs(10)).code(), Some(0));
    let output = daemon.output();
    assert!(
        !output.contains("Too many open files"),
        "drainer ran out of descriptors:\n{output}"
    );
}

#[test]
fn a_refused_user_is_answered_at_once_without_being_read() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("refused");
    let socket = dir.path().join("drainer.sock");
    let _daemon = daemon_with_descriptors(
        &netns,
        &[
            "--port",
            "8000",
            "--control-socket",
            socket.to_str().unwrap(),
        ],
        DESCRIPTORS,
    );
    // Connects, sends nothing, and times how long the answer takes.
    let mut command = Command::new(SYSTEM_PYTHON);
    command.args([
        "-c",
        "import socket, sys, time\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.connect(sys.argv[1])\n\
         started = time.monotonic()\n\
         s.settimeout(30)\n\
         reply = s.recv(4096)\n\
         print(f'{time.monotonic() - started:.3f}', reply.decode().strip())\n",
        socket.to_str().unwrap(),
    ]);
    as_nobody(&mut command, 64);
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (seconds, reply) = stdout.trim().split_once(' ').unwrap();
    assert!(
        reply.contains("uid 65534 may not control drainer"),
        "{reply}"
    );
    // Drainer reads a permitted client's request for up to 5 s; a refused one is not read.
    let seconds: f64 = seconds.parse().unwrap();
    assert!(seconds < 2.0, "answered after {seconds}s");
}

#[test]
fn signals_other_than_the_stop_signals_do_not_end_a_draining_daemon() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("signals");
    let socket = dir.path().join("drainer.sock");
    let socket_arg = socket.to_str().unwrap();
    let _server = echo_server(&netns, &[("127.0.0.1", 8000)]);
    let mut daemon = daemon_with_descriptors(
        &netns,
        &["--port", "8000", "--control-socket", socket_arg],
        1024,
    );
    let held = connect_many(&netns, loopback(8000), 2);
    let mut waiter = drainer_client_process(&["drain", "--wait", "--socket", socket_arg]);
    wait_for_status(
        &socket,
        "a drain holding 2 connections",
        |s| s["state"] == "draining" && s["live"] == 2,
        Duration::from_secs(20),
    );
    for (signal, logged) in [
        (Signal::SIGHUP, "SIGHUP: draining, 2 live"),
        (Signal::SIGUSR1, "ignored SIGUSR1"),
        (Signal::SIGUSR2, "ignored SIGUSR2"),
        (Signal::SIGQUIT, "ignored SIGQUIT"),
    ] {
        daemon.signal(signal);
        daemon.wait_for(logged, Duration::from_secs(10));
    }
    assert_eq!(status_json(&socket)["state"], "draining");
    drop(held);
    let output = waiter.wait(Duration::from_secs(30));
    assert!(output.success(), "{output}\n{}", waiter.output());
    assert_eq!(status_json(&socket)["outcome"], "drained");
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait(Duration::from_secs(10)).code(), Some(0));
}

/// `drainer daemon --port 8000 ARGS`, which must refuse to start; its output. (One that starts
/// fails the test as it does not exit.)
fn refused_start(netns: &TestNetns, args: &[&str]) -> String {
    let mut command = drainer_command(netns, &["daemon", "--port", "8000"]);
    command.args(args);
    let mut daemon = Process::spawn("drainer daemon", command);
    let status = daemon.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", daemon.output());
    daemon.output()
}

#[test]
fn what_is_at_the_control_socket_path_is_never_followed_nor_deleted() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("socket-path");

    // A symlink to a private file: not followed, neither removed nor chmodded through.
    let secret = dir.path().join("secret");
    fs::write(&secret, "private\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let stderr = refused_start(&netns, &["--control-socket", link.to_str().unwrap()]);
    assert!(
        stderr.contains("is a symbolic link, not a socket"),
        "{stderr}"
    );
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let meta = fs::metadata(&secret).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::read_to_string(&secret).unwrap(), "private\n");

    // A regular file: kept.
    let file = dir.path().join("file.sock");
    fs::write(&file, "keep me\n").unwrap();
    let stderr = refused_start(&netns, &["--control-socket", file.to_str().unwrap()]);
    assert!(
        stderr.contains("is a regular file, not a socket"),
        "{stderr}"
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), "keep me\n");

    // A socket a killed daemon left is replaced, and the new one gets its mode at bind, whatever
    // the umask drainer was started with.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let mut command = drainer_command(
        &netns,
        &[
            "daemon",
            "--port",
            "8000",
            "--control-socket",
            stale.to_str().unwrap(),
        ],
    );
    // SAFETY: umask is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::umask(0o077);
            Ok(())
        });
    }
    let daemon = Process::spawn("drainer daemon", command);
    daemon.wait_for("control socket", Duration::from_secs(20));
    let meta = fs::symlink_metadata(&stale).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    assert_eq!(status_json(&stale)["state"], "serving");
}

#[test]
fn a_token_file_others_can_read_or_a_symlinked_one_is_refused_at_start() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("token");
    let socket = dir.path().join("drainer.sock");
    let socket_arg = socket.to_str().unwrap();
    let token = dir.path().join("token");
    fs::write(&token, TOKEN).unwrap();
    for mode in [0o644, 0o640, 0o602] {
        fs::set_permissions(&token, fs::Permissions::from_mode(mode)).unwrap();
        let stderr = refused_start(
            &netns,
            &[
                "--control-socket",
                socket_arg,
                "--http",
                "127.0.0.1:9090",
                "--http-token-file",
                token.to_str().unwrap(),
            ],
        );
        assert!(
            stderr.contains(&format!("chmod 600 {}", token.display())),
            "mode {mode:o}: {stderr}"
        );
    }

    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.path().join("token-link");
    std::os::unix::fs::symlink(&token, &link).unwrap();
    let stderr = refused_start(
        &netns,
        &[
            "--control-socket",
            socket_arg,
            "--http",
            "127.0.0.1:9090",
            "--http-token-file",
            link.to_str().unwrap(),
        ],
    );
    assert!(stderr.contains("is a symbolic link"), "{stderr}");

    // Mode 600, the file itself: served.
    let _daemon = daemon_with_descriptors(
        &netns,
        &[
            "--port",
            "8000",
            "--control-socket",
            socket_arg,
            "--http",
            "127.0.0.1:9090",
            "--http-token-file",
            token.to_str().unwrap(),
        ],
        1024,
    );
    let (code, _) = http_request(
        netns.connect(loopback(9090)).unwrap(),
        "GET",
        "/drain",
        &["Authorization: Bearer wrong-token-wrong-token"],
    );
    assert_eq!(code, 401);
}
