//! Harness for the integration tests: each runs drainer, real servers and real clients on this
//! machine's kernel, inside a network namespace of its own.
//!
//! The tests need root (they load eBPF programs and create namespaces). Without it they fail with
//! a message saying so; they never skip.
pub mod capabilities;
pub mod fixtures;
pub mod netns;
pub mod process;

use std::{env, path::PathBuf};

/// Fails the test unless it runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "integration tests load eBPF programs and create network namespaces: run them as root (`sudo ./x test`)"
    );
}

/// The drainer binary under test (`./x test` builds it and sets DRAINER_BIN).
pub fn drainer_bin() -> PathBuf {
    let path = env::var_os("DRAINER_BIN")
        .map(PathBuf::from)
        .expect("DRAINER_BIN is not set: run the integration tests through `./x test`");
    assert!(
        path.exists(),
        "DRAINER_BIN={} does not exist",
        path.display()
    );
    path
}

/// The virtualenv python with uvicorn, FastAPI and websockets (`./x test` sets it up).
pub fn python() -> PathBuf {
    env::var_os("DRAINER_TEST_PYTHON")
        .map(PathBuf::from)
        .expect("DRAINER_TEST_PYTHON is not set: run the integration tests through `./x test`")
}

/// A helper script under tests/python.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// CLOCK_MONOTONIC in seconds, the clock Python's `time.monotonic` reads.
pub fn monotonic_now() -> f64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock_gettime");
    now.tv_sec() as f64 + now.tv_nsec() as f64 / 1e9
}

/// `drainer run ARGS` inside `netns`.
pub fn drainer_run(netns: &netns::TestNetns, args: &[&str]) -> process::Process {
    let mut command = netns.command(drainer_bin());
    command.arg("run").args(args).env("DRAINER_LOG", "info");
    process::Process::spawn("drainer", command)
}

/// The pid of the server `drainer run` started, from its "started … pid=N" log line.
pub fn server_pid(drainer: &process::Process) -> nix::unistd::Pid {
    drainer
        .wait_for_match(
            |line| line.contains("started") && line.contains("pid="),
            std::time::Duration::from_secs(5),
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
        .map(nix::unistd::Pid::from_raw)
        .expect("drainer logged no server pid")
}

/// The `live=N` field of a drainer log line.
pub fn live_field(line: &str) -> i64 {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("live="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no live=N in {line:?}"))
}

/// The command line of the echo server (tests/python/echo_server.py) listening on each
/// `host port` pair; it prints `listening` once bound.
pub fn echo_server_command(listen: &[(&str, u16)]) -> Vec<String> {
    let mut command = vec![
        python().display().to_string(),
        script("echo_server.py").display().to_string(),
    ];
    for (host, port) in listen {
        command.extend([host.to_string(), port.to_string()]);
    }
    command
}

/// The command line of uvicorn serving tests/python/live_app.py (live WebSocket sessions) on
/// 127.0.0.1:`port`.
pub fn live_app_command(port: u16) -> Vec<String> {
    [
        python().display().to_string(),
        "-m".into(),
        "uvicorn".into(),
        "live_app:app".into(),
        "--app-dir".into(),
        script("").display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
    ]
    .into()
}

/// Waits for tests/python/live_clients.py to exit successfully; returns its one JSON report per
/// session, checking there are `sessions` of them.
pub fn live_session_results(
    clients: &mut process::Process,
    sessions: usize,
    timeout: std::time::Duration,
) -> Vec<serde_json::Value> {
    let status = clients.wait(timeout);
    assert!(
        status.success(),
        "clients failed: {status}\n{}",
        clients.output()
    );
    let results: Vec<serde_json::Value> = clients
        .lines()
        .iter()
        .filter(|line| line.text.starts_with('{'))
        .map(|line| serde_json::from_str(&line.text).expect("session JSON"))
        .collect();
    assert_eq!(results.len(), sessions, "{}", clients.output());
    results
}

/// The echo server (tests/python/echo_server.py) listening on each `host port` pair in `netns`.
pub fn echo_server(netns: &netns::TestNetns, listen: &[(&str, u16)]) -> process::Process {
    let mut command = netns.command(python());
    command.arg(script("echo_server.py"));
    for (host, port) in listen {
        command.arg(host).arg(port.to_string());
    }
    let server = process::Process::spawn("echo_server", command);
    server.wait_for("listening", std::time::Duration::from_secs(20));
    server
}

/// Writes `payload` and reads the echo back.
pub fn echo(stream: &mut std::net::TcpStream, payload: &[u8]) -> std::io::Result<()> {
    use std::io::{Read as _, Write as _};
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    stream.write_all(payload)?;
    let mut back = vec![0; payload.len()];
    stream.read_exact(&mut back)?;
    assert_eq!(back, payload, "echo returned different bytes");
    Ok(())
}

/// A private directory under /tmp for one test's sockets and files; removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn create(name: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = env::temp_dir().join(format!("drainer-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        // Reachable by the unprivileged users some tests run clients as.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `drainer daemon ARGS` inside `netns`.
pub fn drainer_daemon(netns: &netns::TestNetns, args: &[&str]) -> process::Process {
    let mut command = netns.command(drainer_bin());
    command.arg("daemon").args(args).env("DRAINER_LOG", "info");
    let daemon = process::Process::spawn("drainer daemon", command);
    daemon.wait_for("control socket", std::time::Duration::from_secs(20));
    daemon
}

/// Runs a drainer client command (`status`, `drain`, ...) to completion: (exit code, stdout, stderr).
pub fn drainer_client(args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(drainer_bin())
        .args(args)
        .output()
        .expect("run drainer");
    (
        output.status.code().expect("the client died of a signal"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `drainer status --json` through `socket`.
pub fn status_json(socket: &std::path::Path) -> serde_json::Value {
    let (code, stdout, stderr) =
        drainer_client(&["status", "--json", "--socket", socket.to_str().unwrap()]);
    assert_eq!(code, 0, "drainer status failed: {stderr}");
    serde_json::from_str(&stdout).expect("status JSON")
}

/// One HTTP/1.1 request over `stream`; returns (status code, body).
pub fn http_request(
    mut stream: std::net::TcpStream,
    method: &str,
    path: &str,
    headers: &[&str],
) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: drainer\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .expect("send the HTTP request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the HTTP response");
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// Where the cgroup v2 hierarchy is mounted (pure v2, or the hybrid layout's `unified`).
pub fn cgroup2_root() -> PathBuf {
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
