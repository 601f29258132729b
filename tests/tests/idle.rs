//! Release on idleness, as `drainer status` shows it: during a drain requested with
//! `--release-when-idle 2s`, a WebSocket session streaming a message every 20 ms is never counted
//! idle, a session silent for longer than 2 s is, and when the streaming one ends the drain
//! releases with only the silent one left.
use std::{path::Path, time::Duration};

use drainer_harness::{
    clients::{live_clients, live_session_ports, live_session_results},
    drainer::{drainer_client_process, drainer_daemon, status_json, wait_for_status},
    netns::TestNetns,
    require_root,
    servers::live_app,
    tempdir::TempDir,
};
use serde_json::Value;

const PORT: u16 = 8000;
const IDLE_SECONDS: f64 = 2.0;
/// The streaming session: 8 s of one message every 20 ms.
const STREAM: &str = "8:0.02";
const STREAM_MESSAGES: u64 = 400;
/// The silent session: one message as it opens, then nothing for a minute.
const SILENT: &str = "60:60";

/// Whether `status` lists the connection from local port `port` among those still active.
fn active(status: &Value, port: u16) -> bool {
    let peer = format!(":{port}");
    status["active"]
        .as_array()
        .expect("an `active` list")
        .iter()
        .any(|connection| connection["peer"].as_str().unwrap().ends_with(&peer))
}

#[test]
fn a_session_streaming_every_20ms_is_never_counted_idle_a_silent_one_is_and_the_drain_releases_to_idle_when_the_stream_ends()
 {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("idle");
    let socket = dir.path().join("drainer.sock");
    let socket_arg = socket.to_str().unwrap();
    let _uvicorn = live_app(&netns, PORT);
    let daemon = drainer_daemon(
        &netns,
        &[
            "--port",
            &PORT.to_string(),
            "--control-socket",
            socket_arg,
            "--drain-timeout",
            "60s",
        ],
    );

    let silent = live_clients(&netns, PORT, &[SILENT.into()], Duration::from_secs(30));
    let silent_port = live_session_ports(&silent)[0];
    let mut stream = live_clients(&netns, PORT, &[STREAM.into()], Duration::from_secs(30));
    let stream_port = live_session_ports(&stream)[0];

    let mut waiter = drainer_client_process(&[
        "drain",
        "--wait",
        "--release-when-idle",
        "2s",
        "--timeout",
        "60s",
        "--socket",
        socket_arg,
    ]);
    // Both sessions open, the silent one counted idle once it has been silent for 2 s.
    let both = wait_for_status(
        &socket,
        "the silent session counted idle",
        |status| status["idle_live"] == 1,
        Duration::from_secs(20),
    );
    assert_eq!(both["live"], 2, "{both}");
    assert_eq!(both["refusing"], true, "{both}");
    assert_eq!(both["release_when_idle_seconds"], IDLE_SECONDS, "{both}");
    assert!(
        active(&both, stream_port) && !active(&both, silent_port),
        "the streaming session (port {stream_port}) should be the one active, the silent one \
         ({silent_port}) idle: {both}"
    );

    // Until the stream ends, every look shows it active and the drain held by it.
    let mut looks = 0;
    let released = loop {
        let status = status_json(&socket);
        if status["state"] == "released" {
            break status;
        }
        assert_eq!(status["state"], "draining", "{status}");
        assert!(
            status["idle_live"] == 1 && active(&status, stream_port),
            "the streaming session was counted idle, or the silent one active: {status}"
        );
        looks += 1;
        std::thread::sleep(Duration::from_millis(50));
    };
    let stream_result = &live_session_results(&mut stream, 1, Duration::from_secs(30))[0];
    assert_eq!(stream_result["code"], 1000, "{stream_result}");
    assert_eq!(
        stream_result["received"], STREAM_MESSAGES,
        "{stream_result}"
    );

    // Released when the stream ended, with the silent session alone left.
    assert_eq!(released["outcome"], "drained-to-idle", "{released}");
    assert_eq!(released["live"], 1, "{released}");
    let line = daemon.wait_for(
        "drained: the 1 connection(s) left have all been idle for 2.0s or more",
        Duration::from_secs(5),
    );
    let ended_at = stream_result["ended_at"].as_f64().unwrap();
    eprintln!(
        "{looks} looks at the status while the stream ran; released {:.3}s after the stream ended",
        line.at - ended_at
    );
    // The close released it, not a later look at idleness: before the stream's end, the release
    // would be a stream counted idle; an idle duration after, some timer.
    assert!(
        line.at > ended_at - 0.5 && line.at < ended_at + IDLE_SECONDS,
        "released {:.3}s after the streaming session ended",
        line.at - ended_at
    );
    let status = waiter.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", waiter.output());
    assert!(
        waiter
            .output()
            .contains("the 1 connection(s) left were idle"),
        "{}",
        waiter.output()
    );
    // The silent session is still open: the daemon signals nothing.
    assert_eq!(status_json(Path::new(&socket))["live"], 1);
    drop(silent);
}
