//! The places drainer runs: the sd_notify messages a `Type=notify` unit receives, in order; the
//! example systemd units; the Kubernetes sidecar manifest.
use std::{os::unix::net::UnixDatagram, path::PathBuf, process::Command, time::Duration};

use nix::sys::signal::Signal;

use drainer_harness::{
    clients::{http_request, live_clients, live_session_results, loopback, session_lengths},
    drainer::{drainer_command, drainer_daemon, start_drain, status_json, wait_for_status},
    drainer_bin,
    netns::TestNetns,
    patience,
    process::Process,
    python, require_root, script,
    servers::{echo_server_command, live_app},
    tempdir::TempDir,
};

/// Every datagram that arrives within `quiet` of the previous one.
fn collect(socket: &UnixDatagram, quiet: Duration) -> Vec<String> {
    socket.set_read_timeout(Some(quiet)).unwrap();
    let mut messages = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buffer) {
        messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    }
    messages
}

/// The app container's user in the Kubernetes example, allowed on the control socket.
const APP_UID: &str = "10001";

/// The stop timeout one EXTEND_TIMEOUT_USEC message asks for, at most: drainer's window.
const MAX_EXTENSION_USEC: u64 = 60_000_000;

fn extension_usec(message: &str) -> u64 {
    message
        .lines()
        .find_map(|l| l.strip_prefix("EXTEND_TIMEOUT_USEC="))
        .unwrap_or_else(|| panic!("no EXTEND_TIMEOUT_USEC in {message:?}"))
        .parse()
        .unwrap()
}

fn position(messages: &[String], needle: &str) -> usize {
    messages
        .iter()
        .position(|m| m.lines().any(|line| line.starts_with(needle)))
        .unwrap_or_else(|| panic!("no {needle} among {messages:#?}"))
}

#[test]
fn notify_messages_arrive_in_order_ready_status_extend_stopping() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("notify");
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();

    let mut command = drainer_command(
        &netns,
        &[
            "run",
            "--port",
            "8000",
            "--drain-timeout",
            "120s",
            "--kill-after",
            "10s",
            "--",
        ],
    );
    command
        .args(echo_server_command(&[("127.0.0.1", 8000)]))
        .env("NOTIFY_SOCKET", &notify_path);
    let mut drainer = Process::spawn("drainer", command);
    drainer.wait_for("listening", Duration::from_secs(20));
    let held = netns.connect(loopback(8000)).unwrap();
    start_drain(&drainer);
    std::thread::sleep(Duration::from_millis(200));
    drop(held);
    drainer.wait(Duration::from_secs(10));
    let messages = collect(&notify, Duration::from_millis(300));

    let ready = position(&messages, "READY=1");
    assert_eq!(ready, 0, "READY=1 must come first: {messages:#?}");
    assert!(
        messages[0].contains("STATUS=serving: 0 live"),
        "{messages:#?}"
    );
    let draining = position(&messages, "STATUS=draining: 1 live");
    let extend = position(&messages, "EXTEND_TIMEOUT_USEC=");
    let stopping = position(&messages, "STOPPING=1");
    assert!(
        ready < draining && draining <= extend + 1 && extend < stopping,
        "out of order: {messages:#?}"
    );
    // One message reaches a window at most; the next ones follow while the drain lasts.
    let usec = extension_usec(&messages[extend]);
    assert!(
        usec > 0 && usec <= MAX_EXTENSION_USEC,
        "extended by {usec} µs: {messages:#?}"
    );
    assert!(
        messages[stopping].contains("STATUS=released"),
        "{messages:#?}"
    );
}

/// systemd takes at most 71.6 minutes from one EXTEND_TIMEOUT_USEC message, and a drain may be
/// longer: drainer asks again before each extension runs out, for as long as the drain lasts.
#[test]
fn a_drain_longer_than_one_extension_is_extended_again_before_it_runs_out() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("notify-long");
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let mut command = drainer_command(
        &netns,
        &["run", "--port", "8000", "--drain-timeout", "3h", "--"],
    );
    command
        .args(echo_server_command(&[("127.0.0.1", 8000)]))
        .env("NOTIFY_SOCKET", &notify_path);
    let mut drainer = Process::spawn("drainer", command);
    drainer.wait_for("listening", Duration::from_secs(20));
    let held = netns.connect(loopback(8000)).unwrap();
    start_drain(&drainer);

    // Each extension, with when it arrived; a bound on the wait far past the window, only for a
    // drainer that never renews.
    notify
        .set_read_timeout(Some(patience(Duration::from_micros(
            3 * MAX_EXTENSION_USEC,
        ))))
        .unwrap();
    let mut extensions = Vec::new();
    let mut buffer = [0u8; 4096];
    while extensions.len() < 2 {
        let n = notify
            .recv(&mut buffer)
            .expect("no further EXTEND_TIMEOUT_USEC while the drain went on");
        let message = String::from_utf8_lossy(&buffer[..n]);
        if message.contains("EXTEND_TIMEOUT_USEC=") {
            extensions.push((std::time::Instant::now(), extension_usec(&message)));
        }
    }
    for pair in extensions.windows(2) {
        let [(asked, usec), (renewed, _)] = pair else {
            unreachable!()
        };
        assert!(
            *usec <= MAX_EXTENSION_USEC,
            "one message asked for {usec} µs"
        );
        assert!(
            renewed.duration_since(*asked) < Duration::from_micros(*usec),
            "renewed only after the extension ran out: {extensions:?}"
        );
    }
    drop(held);
    drainer.wait_for("drained", Duration::from_secs(20));
    drainer.wait(Duration::from_secs(20));
}

#[test]
fn the_example_unit_files_pass_systemd_analyze_verify() {
    let units = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let dir = TempDir::create("units");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&units).expect("deploy/systemd") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "service") {
            // Point the units at the binary under test: verify checks that it exists.
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("/usr/local/bin/drainer", drainer_bin().to_str().unwrap());
            let copy = dir.path().join(path.file_name().unwrap());
            std::fs::write(&copy, text).unwrap();
            names.push(copy);
        }
    }
    assert!(
        names.len() >= 3,
        "expected the wrapper, companion and app units in {}",
        units.display()
    );
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .args(&names)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned:\n{stderr}"
    );
}

/// The Kubernetes example's order, on the real kernel: the pod is a network namespace, the sidecar
/// attaches from outside it, and the kubelet's preStop runs `drainer drain --wait` as the app's
/// (unprivileged) user through the socket the containers share. The HTTP listener, reachable
/// from outside the pod, serves /readyz but cannot start a drain.
#[test]
fn pod_rehearsal_prestop_exec_as_the_app_user_drains_through_the_shared_socket() {
    require_root();
    let pod = TestNetns::create();
    let node = TestNetns::create();
    let dir = TempDir::create("pod-exec");
    let socket = dir.path().join("drainer.sock");
    let socket = socket.to_str().unwrap();
    let mut uvicorn = live_app(&pod, 8000);
    let lengths = session_lengths(10, Duration::from_secs(2), Duration::from_secs(4));
    let mut clients = live_clients(&pod, 8000, &lengths, Duration::from_secs(30));

    // Longer than the longest session, wherever the tests run.
    let drain_timeout = format!("{}s", patience(Duration::from_secs(60)).as_secs());
    let mut daemon = drainer_daemon(
        &node,
        &[
            "--port",
            "8000",
            "--netns",
            pod.path().to_str().unwrap(),
            "--http",
            "127.0.0.1:9090",
            "--control-socket",
            socket,
            "--allow-uid",
            APP_UID,
            "--drain-timeout",
            &drain_timeout,
        ],
    );
    // The daemon's own namespace holds its HTTP listener (in a real pod, the pod's).
    let http = || node.connect(loopback(9090)).unwrap();
    assert_eq!(http_request(http(), "GET", "/readyz", &[]).0, 200);
    assert_eq!(http_request(http(), "POST", "/drain", &[]).0, 403);
    assert_eq!(status_json(socket.as_ref())["state"], "serving");

    // The kubelet runs the preStop in the app container, as the app's user, who may not reach
    // the clone: a copy in the shared directory, as the image would hold one.
    let mut prestop = Command::new("setpriv");
    prestop
        .args(["--reuid", APP_UID, "--regid", APP_UID, "--clear-groups"])
        .arg(dir.drainer_copy())
        .args(["drain", "--wait", "--socket", socket]);
    let mut prestop = Process::spawn("preStop", prestop);
    wait_for_status(
        socket.as_ref(),
        "draining",
        |status| status["state"] == "draining",
        Duration::from_secs(20),
    );
    assert_eq!(http_request(http(), "GET", "/readyz", &[]).0, 503);
    let status = prestop.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", prestop.output());

    // Then the kubelet sends the app its SIGTERM; every session had ended on its own.
    uvicorn.signal(Signal::SIGTERM);
    uvicorn.wait(Duration::from_secs(30));
    for result in live_session_results(&mut clients, 10, Duration::from_secs(30)) {
        assert_eq!(result["code"], 1000, "{result}");
        assert_eq!(result["received"], result["expected"], "{result}");
    }
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn the_kubernetes_sidecar_manifest_has_what_drainer_needs() {
    let manifest =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/deployment.yaml");
    let output = Command::new(python())
        .arg(script("check_sidecar_manifest.py"))
        .arg(&manifest)
        // The image's tag must be drainer's version, which `./x dist` tags it with.
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../drainer/Cargo.toml"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}: {}{}",
        manifest.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
