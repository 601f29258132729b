//! `drainer daemon`: the Kubernetes pod rehearsal, /metrics against `drainer status`, the control
//! socket's access checks and its answers to malformed requests, `drain --wait` exit codes and
//! progress lines.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Shutdown, SocketAddr},
    os::unix::{net::UnixStream, process::CommandExt as _},
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use drainer_harness::{
    clients::{
        connect_many, http_request, live_clients, live_session_results, loopback, session_lengths,
    },
    drainer::{drainer_client, drainer_client_process, drainer_daemon, status_json},
    drainer_bin,
    netns::TestNetns,
    patience,
    process::Process,
    python, require_root, script,
    servers::{echo_server, live_app, signal_server},
    tempdir::TempDir,
};
use nix::sys::signal::Signal;
use serde_json::Value;

const TOKEN: &str = "a-long-random-token-for-the-tests";

fn http_addr() -> SocketAddr {
    loopback(9090)
}

fn socket_arg(dir: &TempDir) -> String {
    dir.path().join("drainer.sock").display().to_string()
}

fn wait_for_state(socket: &str, state: &str) -> Value {
    let deadline = Instant::now() + patience(Duration::from_secs(10));
    loop {
        let status = status_json(socket.as_ref());
        if status["state"] == state {
            return status;
        }
        assert!(Instant::now() < deadline, "never reached {state}: {status}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pod_rehearsal_prestop_http_drain_then_sigterm_loses_no_session() {
    require_root();
    let pod = TestNetns::create();
    let node = TestNetns::create();
    let dir = TempDir::create("pod");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    // Only root may read it: drainer refuses a token others can read.
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let socket = socket_arg(&dir);

    // The app container: uvicorn in the pod's namespace.
    let mut uvicorn = live_app(&pod, 8000);

    // Live sessions exist before the sidecar starts.
    let lengths = session_lengths(20, Duration::from_secs(2), Duration::from_secs(4));
    let mut clients = live_clients(&pod, 8000, &lengths, Duration::from_secs(30));

    // Longer than the longest session, wherever the tests run.
    let drain_timeout = format!("{}s", patience(Duration::from_secs(60)).as_secs());
    // The sidecar attaches from outside, through the pod's namespace file.
    let mut daemon = drainer_daemon(
        &node,
        &[
            "--port",
            "8000",
            "--netns",
            pod.path().to_str().unwrap(),
            "--http",
            "127.0.0.1:9090",
            "--http-token-file",
            token_file.to_str().unwrap(),
            "--control-socket",
            &socket,
            "--drain-timeout",
            &drain_timeout,
        ],
    );
    let status = status_json(socket.as_ref());
    assert_eq!(
        status["live"], 20,
        "sessions open before the daemon started were not counted: {status}"
    );

    // Without the token: refused, and nothing starts.
    let (code, _) = http_request(node.connect(http_addr()).unwrap(), "GET", "/drain", &[]);
    assert_eq!(code, 401);
    let (code, _) = http_request(
        node.connect(http_addr()).unwrap(),
        "GET",
        "/drain",
        &["Authorization: Bearer wrong-token-wrong-token"],
    );
    assert_eq!(code, 401);
    assert_eq!(status_json(socket.as_ref())["state"], "serving");
    assert_eq!(
        http_request(node.connect(http_addr()).unwrap(), "GET", "/readyz", &[]).0,
        200
    );

    // The kubelet runs the preStop hook: GET /drain with the token blocks until release.
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let (prestop, readyz_while_draining, refused) = thread::scope(|scope| {
        let prestop = scope.spawn(|| {
            http_request(
                node.connect(http_addr()).unwrap(),
                "GET",
                "/drain",
                &[&bearer],
            )
        });
        wait_for_state(&socket, "draining");
        let readyz = http_request(node.connect(http_addr()).unwrap(), "GET", "/readyz", &[]).0;
        let refused = pod
            .connect(loopback(8000))
            .expect_err("accepted while draining");
        (prestop.join().unwrap(), readyz, refused)
    });
    assert_eq!(readyz_while_draining, 503);
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    assert_eq!(prestop, (200, "drained\n".to_owned()));

    // Then the kubelet sends the app its SIGTERM.
    uvicorn.signal(Signal::SIGTERM);
    uvicorn.wait(Duration::from_secs(30));
    let results = live_session_results(&mut clients, 20, Duration::from_secs(30));
    for result in &results {
        assert_eq!(result["code"], 1000, "{result}");
        assert_eq!(result["received"], result["expected"], "{result}");
    }
    // Last, the sidecar is stopped.
    daemon.signal(Signal::SIGTERM);
    assert_eq!(
        daemon.wait(Duration::from_secs(10)).code(),
        Some(0),
        "{}",
        daemon.output()
    );
}

#[test]
fn metrics_parse_as_prometheus_text_and_match_status() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("metrics");
    let socket = socket_arg(&dir);
    let _server = echo_server(&netns, &[("127.0.0.1", 8000)]);
    let _daemon = drainer_daemon(
        &netns,
        &[
            "--port",
            "8000",
            "--http",
            "127.0.0.1:9090",
            "--control-socket",
            &socket,
        ],
    );
    let addr = loopback(8000);
    let _held = connect_many(&netns, addr, 3);

    let (code, _, stderr) = drainer_client(&["drain", "--socket", &socket]);
    assert_eq!(code, 0, "{stderr}");
    for _ in 0..2 {
        assert_eq!(
            netns.connect(addr).unwrap_err().kind(),
            ErrorKind::ConnectionRefused
        );
    }

    let (code, text) = http_request(netns.connect(http_addr()).unwrap(), "GET", "/metrics", &[]);
    assert_eq!(code, 200);
    let status = status_json(socket.as_ref());
    let mut parser = Command::new(python());
    parser
        .arg(script("parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut parser = parser.spawn().unwrap();
    parser
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = parser.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "not Prometheus text: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let samples: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let sample = |name: &str, label: (&str, &str)| -> f64 {
        samples
            .iter()
            .find(|s| s["name"] == name && s["labels"][label.0] == label.1)
            .and_then(|s| s["value"].as_f64())
            .unwrap_or_else(|| panic!("no {name}{{{}={}}} in\n{text}", label.0, label.1))
    };
    assert_eq!(
        sample("drainer_live_connections", ("port", "8000")),
        status["live"].as_f64().unwrap()
    );
    assert_eq!(status["live"], 3);
    assert_eq!(
        sample("drainer_refused_connections_total", ("port", "8000")),
        status["refused"].as_f64().unwrap()
    );
    assert_eq!(status["refused"], 2);
    assert_eq!(sample("drainer_state", ("state", "draining")), 1.0);
    assert_eq!(sample("drainer_state", ("state", "serving")), 0.0);
    let unlabelled = |name: &str| {
        samples
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["value"].as_f64())
            .unwrap()
    };
    assert_eq!(
        unlabelled("drainer_deadline_hits_total"),
        status["deadline_hits"].as_f64().unwrap()
    );
    assert!(unlabelled("drainer_drain_duration_seconds") > 0.0);
}

#[test]
fn the_control_socket_refuses_users_not_allowed() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("control-uid");
    let socket = socket_arg(&dir);
    let daemon = drainer_daemon(&netns, &["--port", "8000", "--control-socket", &socket]);

    // The client as nobody runs from a copy nobody can reach, wherever the clone lives.
    let client = dir.drainer_copy();
    let as_nobody = |args: &[&str]| {
        let output = Command::new(&client)
            .args(args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = as_nobody(&["drain", "--socket", &socket]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("uid 65534 may not control drainer"),
        "{stderr}"
    );
    daemon.wait_for(
        "refused a control request from a user not allowed",
        Duration::from_secs(5),
    );
    assert_eq!(
        status_json(socket.as_ref())["state"],
        "serving",
        "the refused request started a drain"
    );

    // With --allow-uid the same user is served.
    let other = TestNetns::create();
    let other_dir = TempDir::create("control-allowed");
    let other_socket = socket_arg(&other_dir);
    let _allowed = drainer_daemon(
        &other,
        &[
            "--port",
            "8000",
            "--control-socket",
            &other_socket,
            "--allow-uid",
            "65534",
        ],
    );
    let (code, stderr) = as_nobody(&["status", "--socket", &other_socket]);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn malformed_control_requests_each_get_an_error_reply_and_the_daemon_keeps_serving() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("control-malformed");
    let socket = socket_arg(&dir);
    let _daemon = drainer_daemon(&netns, &["--port", "8000", "--control-socket", &socket]);

    let oversized = format!(
        "{{\"command\":\"status\",\"pad\":\"{}\"}}\n",
        "x".repeat(5000)
    );
    let deep = format!("{}\n", "[".repeat(3000));
    let requests: Vec<&[u8]> = vec![
        b"\n",
        b"status\n",
        b"{}\n",
        b"{\"command\":\"reboot\"}\n",
        b"{\"command\":\"STATUS\"}\n",
        b"{\"command\":\"status\",\"extra\":true}\n",
        b"{\"command\":\"drain\",\"wait\":\"yes\"}\n",
        b"{\"command\":\"drain\",\"timeout_seconds\":\"30s\"}\n",
        b"{\"command\":\"drain\",\"timeout_seconds\":-5}\n",
        b"{\"command\":\"drain\",\"timeout_seconds\":0}\n",
        b"{\"command\":\"drain\",\"timeout_seconds\":1e308}\n",
        b"{\"command\":7}\n",
        b"{\"command\":null}\n",
        b"[\"status\"]\n",
        b"\"status\"\n",
        b"null\n",
        b"42\n",
        b"\xff\xfe\xfd\n",
        b"{\"command\":\"status\"",
        b"{\"command\":\"sta",
        b"",
        oversized.as_bytes(),
        deep.as_bytes(),
        b"{\"command\":\"status\"}{\"command\":\"drain\"}\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ];
    assert!(requests.len() >= 20);
    for request in &requests {
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream
            .set_read_timeout(Some(patience(Duration::from_secs(10))))
            .unwrap();
        let _ = stream.write_all(request);
        let _ = stream.shutdown(Shutdown::Write);
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        let reply: Value = serde_json::from_str(&reply).unwrap_or_else(|_| {
            panic!(
                "no JSON reply to {:?}: {reply:?}",
                String::from_utf8_lossy(request)
            )
        });
        assert_eq!(
            reply["reply"],
            "error",
            "request {:?} got {reply}",
            String::from_utf8_lossy(request)
        );
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    // A client that connects and sends nothing is answered when its time is up.
    let mut silent = UnixStream::connect(&socket).unwrap();
    let mut reply = String::new();
    silent.read_to_string(&mut reply).unwrap();
    assert!(reply.contains("not received in time"), "{reply}");

    let status = status_json(socket.as_ref());
    assert_eq!(
        status["state"], "serving",
        "a malformed request started a drain: {status}"
    );
}

#[test]
fn drain_wait_exits_3_when_the_deadline_cuts_the_drain_and_4_when_released_early() {
    require_root();
    let netns = TestNetns::create();
    let _server = echo_server(&netns, &[("127.0.0.1", 8000)]);
    let addr = loopback(8000);
    let _held = netns.connect(addr).unwrap();

    let dir = TempDir::create("deadline");
    let socket = socket_arg(&dir);
    let _daemon = drainer_daemon(&netns, &["--port", "8000", "--control-socket", &socket]);
    let (code, _, stderr) =
        drainer_client(&["drain", "--wait", "--timeout", "1s", "--socket", &socket]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("deadline passed"), "{stderr}");
    assert_eq!(status_json(socket.as_ref())["deadline_hits"], 1);

    let other_ns = TestNetns::create();
    let _other_server = echo_server(&other_ns, &[("127.0.0.1", 8000)]);
    let _other_held = other_ns.connect(addr).unwrap();
    let other = TempDir::create("early");
    let other_socket = socket_arg(&other);
    let _other_daemon = drainer_daemon(
        &other_ns,
        &["--port", "8000", "--control-socket", &other_socket],
    );
    let waiter = Command::new(drainer_bin())
        .args(["drain", "--wait", "--socket", &other_socket])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_state(&other_socket, "draining");
    let (code, _, stderr) = drainer_client(&["release", "--socket", &other_socket]);
    assert_eq!(code, 0, "{stderr}");
    let output = waiter.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn release_signals_the_pidfile_process_and_every_process_of_the_cgroup() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("release-target");
    let pidfile = dir.path().join("app.pid");

    // --release-pidfile: the pid is read at release time.
    let app = signal_server(&netns, 8000);
    std::fs::write(&pidfile, format!("{}\n", app.pid())).unwrap();
    let socket = socket_arg(&dir);
    let _daemon = drainer_daemon(
        &netns,
        &[
            "--port",
            "8000",
            "--control-socket",
            &socket,
            "--release-pidfile",
            pidfile.to_str().unwrap(),
        ],
    );
    let (code, _, stderr) = drainer_client(&["drain", "--wait", "--socket", &socket]);
    assert_eq!(code, 0, "{stderr}");
    app.wait_for("got SIGTERM", Duration::from_secs(5));

    // --release-cgroup with --release-signal: every process of the cgroup hears it.
    let cgroup_root = cgroup2_root();
    let cgroup = cgroup_root.join(format!("drainer-test-{}", std::process::id()));
    std::fs::create_dir_all(&cgroup).unwrap();
    let workers: Vec<Process> = [8001, 8002]
        .into_iter()
        .map(|port| signal_server(&netns, port))
        .collect();
    for worker in &workers {
        std::fs::write(cgroup.join("cgroup.procs"), worker.pid().to_string()).unwrap();
    }
    let other_dir = TempDir::create("release-cgroup");
    let other_socket = socket_arg(&other_dir);
    let _other = drainer_daemon(
        &netns,
        &[
            "--port",
            "8001",
            "--control-socket",
            &other_socket,
            "--release-cgroup",
            cgroup.to_str().unwrap(),
            "--release-signal",
            "SIGUSR1",
        ],
    );
    let (code, _, stderr) = drainer_client(&["drain", "--wait", "--socket", &other_socket]);
    assert_eq!(code, 0, "{stderr}");
    for worker in &workers {
        worker.wait_for("got SIGUSR1", Duration::from_secs(5));
    }
    drop(workers);
    // Killed processes leave the cgroup once reaped; then it can go.
    let deadline = Instant::now() + patience(Duration::from_secs(5));
    while std::fs::remove_dir(&cgroup).is_err() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

/// Where the cgroup v2 hierarchy is mounted (pure v2, or the hybrid layout's `unified`).
fn cgroup2_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .expect("a cgroup v2 hierarchy must be mounted for this test")
}

/// Sends `request` on a fresh connection to the HTTP endpoint, then the answer's status code.
fn raw_http(netns: &TestNetns, request: &[u8]) -> Option<u16> {
    let mut stream = netns.connect(http_addr()).unwrap();
    stream
        .set_read_timeout(Some(patience(Duration::from_secs(10))))
        .unwrap();
    let _ = stream.write_all(request);
    let _ = stream.shutdown(Shutdown::Write);
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn malformed_http_requests_each_get_a_clear_status_and_the_daemon_keeps_serving() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("http-malformed");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    // Only root may read it: drainer refuses a token others can read.
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let socket = socket_arg(&dir);
    let _daemon = drainer_daemon(
        &netns,
        &[
            "--port",
            "8000",
            "--http",
            "127.0.0.1:9090",
            "--http-token-file",
            token_file.to_str().unwrap(),
            "--control-socket",
            &socket,
        ],
    );

    let oversized = format!(
        "GET /readyz HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let many_headers = format!("GET /readyz HTTP/1.1\r\n{}\r\n", "X-A: 1\r\n".repeat(40));
    let cases: Vec<(&[u8], u16)> = vec![
        (b"GET /nope HTTP/1.1\r\n\r\n", 404),
        (b"DELETE /drain HTTP/1.1\r\n\r\n", 405),
        (b"PUT /readyz HTTP/1.1\r\n\r\n", 405),
        (b"POST /drain HTTP/1.1\r\n\r\n", 401),
        (
            b"POST /drain HTTP/1.1\r\nAuthorization: Bearer wrong\r\n\r\n",
            401,
        ),
        (
            b"POST /drain HTTP/1.1\r\nAuthorization: Basic eDp5\r\n\r\n",
            401,
        ),
        (
            b"POST /drain HTTP/1.1\r\nAuthorization: Bearer\r\n\r\n",
            401,
        ),
        (b"garbage\r\n\r\n", 400),
        (b"GET /readyz HTTP/9.9\r\n\r\n", 400),
        (b"GET /readyz HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /readyz HTTP/1.1\r\n", 400),
        (b"", 400),
        (b"\xff\xfe\xfd\r\n\r\n", 400),
        (oversized.as_bytes(), 400),
        (many_headers.as_bytes(), 400),
    ];
    for (request, expected) in &cases {
        assert_eq!(
            raw_http(&netns, request),
            Some(*expected),
            "{:?}",
            String::from_utf8_lossy(&request[..request.len().min(80)])
        );
    }

    // Slowloris: a head that never completes is answered and closed after the head deadline,
    // while other clients are served meanwhile.
    let mut slow = netns.connect(http_addr()).unwrap();
    slow.write_all(b"GET /readyz HTTP/1.1\r\n").unwrap();
    let started = Instant::now();
    let (code, body) = http_request(netns.connect(http_addr()).unwrap(), "GET", "/readyz", &[]);
    assert_eq!((code, body.as_str()), (200, "serving\n"));
    slow.set_read_timeout(Some(patience(Duration::from_secs(15))))
        .unwrap();
    let mut answer = String::new();
    for _ in 0..3 {
        if slow.write_all(b"X").is_err() {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    let mut first = [0u8; 64];
    let read = slow.read(&mut first).unwrap_or(0);
    answer.push_str(&String::from_utf8_lossy(&first[..read]));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(started.elapsed() < patience(Duration::from_secs(10)));

    // None of it started a drain.
    assert_eq!(status_json(socket.as_ref())["state"], "serving");
    let (code, _) = http_request(netns.connect(http_addr()).unwrap(), "GET", "/readyz", &[]);
    assert_eq!(code, 200);
}

#[test]
fn drain_wait_off_a_terminal_writes_a_line_when_the_count_changes_not_at_every_report() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("wait-lines");
    let socket = socket_arg(&dir);
    let _server = echo_server(&netns, &[("127.0.0.1", 8000)]);
    let _daemon = drainer_daemon(&netns, &["--port", "8000", "--control-socket", &socket]);
    let mut held = connect_many(&netns, loopback(8000), 2);
    let started = Instant::now();
    let mut waiter = drainer_client_process(&["drain", "--wait", "--socket", &socket]);
    waiter.wait_for("draining: 2 connections live", Duration::from_secs(10));
    // Progress reports come every 500 ms: three seconds of them with nothing changed, twice.
    thread::sleep(Duration::from_secs(3));
    held.pop();
    waiter.wait_for("draining: 1 connections live", Duration::from_secs(10));
    thread::sleep(Duration::from_secs(3));
    drop(held);
    let status = waiter.wait(Duration::from_secs(10));
    let output = waiter.output();
    assert!(status.success(), "{output}");
    let lines: Vec<&str> = output
        .lines()
        .filter(|line| line.starts_with("draining:"))
        .collect();
    // One line per count, and a reminder at most every 10 s while a count lasts.
    let allowed = 2 + started.elapsed().as_secs() / 10;
    assert!(
        lines.len() as u64 <= allowed,
        "{} progress lines in {:.1} s, at most {allowed} expected:\n{output}",
        lines.len(),
        started.elapsed().as_secs_f64()
    );
}
