//! `drainer resume`: a drain started by request (`drainer drain`, HTTP /drain) ends and drainer
//! serves again — new connections accepted, /readyz 200, waiters told; a drain started by SIGTERM
//! cannot be resumed, and there is nothing to resume while serving.
use std::{io::ErrorKind, net::TcpStream, path::Path, thread, time::Duration};

use drainer_harness::{
    clients::{echo, http_request, loopback},
    drainer::{drainer_client, drainer_client_process, drainer_daemon, wait_for_status},
    netns::TestNetns,
    process::Process,
    require_root,
    servers::echo_server,
    tempdir::TempDir,
};
use nix::sys::signal::Signal;
use serde_json::Value;

const PORT: u16 = 8000;
const HTTP: u16 = 9090;
const TOKEN: &str = "a-long-random-token-for-the-resume-tests";

/// An echo server on PORT and `drainer daemon` guarding it, with /readyz and /drain on HTTP.
struct Bed {
    netns: TestNetns,
    dir: TempDir,
    _server: Process,
    daemon: Process,
}

impl Bed {
    fn start(name: &str) -> Self {
        require_root();
        let netns = TestNetns::create();
        let dir = TempDir::create(name);
        let token = dir.path().join("token");
        std::fs::write(&token, TOKEN).unwrap();
        // Only root may read it: drainer refuses a token others can read.
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let server = echo_server(&netns, &[("127.0.0.1", PORT)]);
        let socket = dir.path().join("drainer.sock");
        let daemon = drainer_daemon(
            &netns,
            &[
                "--port",
                &PORT.to_string(),
                "--control-socket",
                socket.to_str().unwrap(),
                "--http",
                &format!("127.0.0.1:{HTTP}"),
                "--http-token-file",
                token.to_str().unwrap(),
                "--drain-timeout",
                "60s",
            ],
        );
        Self {
            netns,
            dir,
            _server: server,
            daemon,
        }
    }

    fn socket(&self) -> String {
        self.dir.path().join("drainer.sock").display().to_string()
    }

    /// `drainer ARGS --socket SOCKET`: (exit code, stdout, stderr).
    fn client(&self, args: &[&str]) -> (i32, String, String) {
        let socket = self.socket();
        drainer_client(&[args, &["--socket", &socket]].concat())
    }

    fn wait_for(&self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        wait_for_status(
            Path::new(&self.socket()),
            what,
            wanted,
            Duration::from_secs(10),
        )
    }

    fn readyz(&self) -> u16 {
        let stream = self.netns.connect(loopback(HTTP)).unwrap();
        http_request(stream, "GET", "/readyz", &[]).0
    }

    /// A connection to the guarded port: accepted (and echoing) or refused.
    fn connect(&self) -> std::io::Result<TcpStream> {
        self.netns.connect(loopback(PORT))
    }

    fn assert_refused(&self) {
        let refused = self
            .connect()
            .expect_err("a new connection was accepted while draining");
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");
    }

    fn assert_serving(&self) {
        let mut stream = self
            .connect()
            .expect("a new connection was refused after resume");
        echo(&mut stream, b"served again").expect("echo on a new connection after resume");
        assert_eq!(self.readyz(), 200, "/readyz after resume");
    }
}

#[test]
fn resume_ends_a_requested_drain_new_connections_are_accepted_readyz_is_200_and_the_waiting_drain_exits_5()
 {
    let bed = Bed::start("resume");
    // A live connection keeps the drain from releasing.
    let mut held = bed.connect().unwrap();
    let socket = bed.socket();
    let mut waiter = drainer_client_process(&["drain", "--wait", "--socket", &socket]);
    bed.wait_for("draining and refusing", |s| {
        s["state"] == "draining" && s["refusing"] == true
    });
    bed.assert_refused();
    assert_eq!(bed.readyz(), 503, "/readyz while draining");

    let (code, _, stderr) = bed.client(&["resume"]);
    assert_eq!(code, 0, "resume failed: {stderr}");
    let status = waiter.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(5), "{}", waiter.output());
    assert!(
        waiter.output().contains("resumed before release"),
        "{}",
        waiter.output()
    );
    bed.assert_serving();
    // Once the connection assert_serving opened has closed, the held one alone is live.
    let status = bed.wait_for("serving with the held connection alone live", |s| {
        s["state"] == "serving" && s["live"] == 1
    });
    assert_eq!(status["refusing"], false, "{status}");
    bed.daemon.wait_for(
        "resumed: accepting new connections again",
        Duration::from_secs(5),
    );
    // The connection held through the drain and the resume was never touched.
    echo(&mut held, b"still here").expect("echo on the connection held through the drain");
}

#[test]
fn resume_after_a_requested_drain_released_at_zero_serves_again() {
    let bed = Bed::start("resume-released");
    let (code, _, stderr) = bed.client(&["drain", "--wait"]);
    assert_eq!(code, 0, "the drain did not release at zero: {stderr}");
    bed.assert_refused();
    assert_eq!(bed.readyz(), 503, "/readyz once released");

    let (code, _, stderr) = bed.client(&["resume"]);
    assert_eq!(code, 0, "resume failed: {stderr}");
    bed.assert_serving();
    let status = bed.wait_for("serving", |s| s["state"] == "serving");
    assert_eq!(status["refusing"], false, "{status}");
}

#[test]
fn a_waiting_http_drain_answers_409_when_the_drain_is_resumed() {
    let bed = Bed::start("resume-http");
    let _held = bed.connect().unwrap();
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let (code, body) = thread::scope(|scope| {
        let prestop = scope.spawn(|| {
            let stream = bed.netns.connect(loopback(HTTP)).unwrap();
            http_request(stream, "POST", "/drain", &[&bearer])
        });
        bed.wait_for("draining", |s| s["state"] == "draining");
        let (code, _, stderr) = bed.client(&["resume"]);
        assert_eq!(code, 0, "resume failed: {stderr}");
        prestop.join().unwrap()
    });
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("resumed"), "{body}");
    bed.assert_serving();
}

#[test]
fn resume_after_a_sigterm_started_drain_exits_1_naming_the_signal_and_the_drain_goes_on() {
    let bed = Bed::start("resume-sigterm");
    let _held = bed.connect().unwrap();
    bed.daemon.signal(Signal::SIGTERM);
    bed.wait_for("draining", |s| s["state"] == "draining");

    let (code, _, stderr) = bed.client(&["resume"]);
    assert_eq!(code, 1, "resume of a SIGTERM drain: {stderr}");
    assert!(
        stderr.contains("SIGTERM") && stderr.contains("cannot be resumed"),
        "{stderr}"
    );
    let status = bed.wait_for("still draining", |s| s["state"] == "draining");
    assert_eq!(status["refusing"], true, "{status}");
    bed.assert_refused();
    assert_eq!(bed.readyz(), 503, "/readyz after the refused resume");
}

#[test]
fn resume_while_serving_exits_1_saying_not_draining() {
    let bed = Bed::start("resume-serving");
    let (code, _, stderr) = bed.client(&["resume"]);
    assert_eq!(code, 1, "resume while serving: {stderr}");
    assert!(stderr.contains("not draining"), "{stderr}");
    let status = bed.wait_for("serving", |s| s["state"] == "serving");
    assert_eq!(status["drains_started"], 0, "{status}");
    bed.assert_serving();
}
