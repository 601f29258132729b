//! A kube-proxy-style service VIP: nftables DNAT in the namespace's OUTPUT hook spreads new
//! connections to the VIP over backends A and B at random, as kube-proxy does with a Service's
//! endpoints. A runs under `drainer run`, B bare. A client opens a new connection per request
//! at a steady rate; A's drainer gets SIGTERM, and the endpoint update that removes A from the
//! rule lands 1.5 s into the drain, as it does while the control plane catches up with a pod
//! going away.
//!
//! Refusing at once turns every connection DNAT still sends to A during those 1.5 s into a
//! failed request. `--accept-for 2s` keeps accepting them until the update has landed.
use std::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use drainer_harness::{
    clients::{NewConnectionRequests, StopOnDrop, get_on_new_connections_until},
    drainer::{drainer_run, start_drain, start_drain_accepting},
    netns::TestNetns,
    patience,
    process::monotonic_now,
    require_root,
    servers::{live_app, live_app_command},
};

const A: u16 = 8001;
const B: u16 = 8002;
const VIP: [u8; 4] = [10, 96, 0, 10];
const VIP_TEXT: &str = "10.96.0.10";
/// New connections (one request each) per second.
const RATE: u32 = 150;
/// From the drain's start to the endpoint update.
const UPDATE_AFTER_SECONDS: f64 = 1.5;
/// A's accept window, longer than the update takes here; stretched by the environment's
/// [`patience`], as an emulated machine is slower to apply the update.
const ACCEPT_FOR: Duration = Duration::from_secs(2);

/// The service's table: VIP:80 DNATed to a random one of `backends`.
fn service_table(backends: &[u16]) -> String {
    let map: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, port)| format!("{i} : 127.0.0.1 . {port}"))
        .collect();
    format!(
        "table ip service {{
    chain output {{
        type nat hook output priority -100; policy accept;
        ip daddr {VIP_TEXT} tcp dport 80 dnat ip to numgen random mod {} map {{ {} }}
    }}
}}
",
        backends.len(),
        map.join(", ")
    )
}

/// The endpoint update: one transaction that leaves `port` the service's only backend.
fn only_backend(port: u16) -> String {
    format!(
        "flush chain ip service output
add rule ip service output ip daddr {VIP_TEXT} tcp dport 80 dnat ip to 127.0.0.1:{port}
"
    )
}

/// One deploy of A with `accept_for` (none: refuse at once); what the client's requests met from
/// a second before the drain until a second after A exited.
fn requests_across_an_endpoint_update(accept_for: Option<Duration>) -> NewConnectionRequests {
    let netns = TestNetns::create();
    netns.add_loopback_address(&format!("{VIP_TEXT}/32"));
    netns.nft(&service_table(&[A, B]));
    let mut options = vec!["--port".to_owned(), A.to_string()];
    if let Some(window) = accept_for {
        options.extend([
            "--accept-for".to_owned(),
            format!("{}ms", window.as_millis()),
        ]);
    }
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let mut drainer = drainer_run(&netns, &options, &live_app_command(A));
    drainer.wait_for("Uvicorn running on", Duration::from_secs(30));
    let _b = live_app(&netns, B);

    let stop = AtomicBool::new(false);
    let vip = (VIP, 80).into();
    let requests = thread::scope(|scope| {
        let client =
            scope.spawn(|| get_on_new_connections_until(&netns, vip, "/health", RATE, &stop));
        let _stop = StopOnDrop(&stop);
        // Both backends take requests before the drain.
        thread::sleep(Duration::from_secs(1));
        // Timed from the signal, which comes before the drain starts: the log line that says it
        // started is read later, by as much as the machine is loaded, and the update timed from
        // it could land after the window it is meant to fall in.
        let signalled = monotonic_now();
        match accept_for {
            Some(_) => start_drain_accepting(&drainer),
            None => start_drain(&drainer),
        };
        thread::sleep(Duration::from_secs_f64(
            (signalled + UPDATE_AFTER_SECONDS - monotonic_now()).max(0.0),
        ));
        netns.nft(&only_backend(B));
        let updated = monotonic_now() - signalled;
        let status = drainer.wait(Duration::from_secs(60));
        // Requests go on after A has gone.
        thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        let requests = client.join().expect("the client thread panicked");
        // uvicorn re-raises SIGTERM after a clean shutdown: 128 + 15.
        assert_eq!(status.code(), Some(143), "{}", drainer.output());
        if let Some(window) = accept_for {
            assert!(
                updated < window.as_secs_f64(),
                "the endpoint update took until {updated:.2}s into the drain, after the accept \
                 window: this run shows nothing about it"
            );
            let over = drainer.wait_for("accept window over", Duration::from_secs(1));
            eprintln!("with --accept-for {window:?}: {}", over.text);
        }
        eprintln!(
            "endpoint update landed {updated:.2}s into the drain; {} requests answered, {} failed",
            requests.answered,
            requests.failures.len()
        );
        requests
    });
    assert!(
        requests.answered > u64::from(RATE),
        "the client made too few requests to show anything: {requests:?}"
    );
    requests
}

#[test]
fn an_accept_window_outlasting_the_endpoint_update_fails_no_request_and_refusing_at_once_fails_some()
 {
    require_root();
    let window = patience(ACCEPT_FOR);
    let with_window = requests_across_an_endpoint_update(Some(window));
    let at_once = requests_across_an_endpoint_update(None);
    eprintln!(
        "failed requests across the endpoint update: {} with --accept-for {window:?}, {} refusing \
         at once",
        with_window.failures.len(),
        at_once.failures.len()
    );
    assert!(
        with_window.failures.is_empty(),
        "requests failed with --accept-for {window:?}: {:?}",
        with_window.failures
    );
    assert!(
        !at_once.failures.is_empty(),
        "refusing at once failed no request: the endpoint update should have sent connections to A \
         for {UPDATE_AFTER_SECONDS}s"
    );
}
