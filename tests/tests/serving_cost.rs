//! What a serving drainer costs the host, and what a drain's start must get right now that it is
//! the moment the programs attach: nothing of drainer's is attached or run while it serves; a
//! drain attaches the refusal hook and the tracepoint; and connections opening and closing across
//! that instant are counted exactly.
use std::{
    fs,
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use drainer_harness::{
    bpf::{links_to, programs_of, runs},
    clients::{connect_many, loopback},
    drainer::{drainer_client, drainer_daemon, status_json, wait_for_status},
    netns::TestNetns,
    require_program, require_root,
    servers::echo_server,
    tempdir::TempDir,
};
use nix::sys::socket::{Backlog, listen};

const PORT: u16 = 8000;

/// `kernel.bpf_stats_enabled` set to 1 for the guard's life, so the kernel counts program runs;
/// the previous value is put back.
struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Self {
        let previous = fs::read_to_string(BPF_STATS).expect("read bpf_stats_enabled");
        fs::write(BPF_STATS, "1").expect("enable bpf_stats_enabled");
        Self { previous }
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, self.previous.trim());
    }
}

/// Opens and closes `n` connections to `addr` from inside `netns`.
fn churn(netns: &TestNetns, addr: SocketAddr, n: usize) {
    netns.run(|| {
        for _ in 0..n {
            drop(TcpStream::connect(addr).expect("connect"));
        }
    });
}

#[test]
fn a_serving_drainer_attaches_and_runs_nothing_and_a_drain_attaches_its_programs() {
    require_root();
    require_program("bpftool", "bpftool");
    let stats = BpfStats::enable();
    let netns = TestNetns::create();
    let dir = TempDir::create("serving-cost");
    let socket = dir.path().join("control.sock");
    let _server = echo_server(&netns, &[("127.0.0.1", PORT)]);
    let daemon = drainer_daemon(
        &netns,
        &[
            "--port",
            &PORT.to_string(),
            "--control-socket",
            socket.to_str().unwrap(),
        ],
    );
    let held = connect_many(&netns, loopback(PORT), 3);
    // Connections on the guarded port and elsewhere on the host, while serving.
    churn(&netns, loopback(PORT), 50);
    let elsewhere = TestNetns::create();
    let _other = echo_server(&elsewhere, &[("127.0.0.1", PORT)]);
    churn(&elsewhere, loopback(PORT), 50);

    let programs = programs_of(daemon.pid().as_raw());
    let mut names: Vec<&str> = programs.values().map(|p| p.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "follow_transitions",
            "refuse_while_draining",
            "seed_established"
        ],
        "loaded at start-up, verified by the kernel"
    );
    assert_eq!(links_to(&programs), [], "attached while serving");
    for program in programs.values() {
        assert_eq!(program.runs, 0, "{} ran while serving", program.name);
    }
    // The count while serving comes from the socket table.
    let status = status_json(&socket);
    assert_eq!(status["state"], "serving");
    assert_eq!(status["live"], 3, "{status}");

    let (code, _, stderr) = drainer_client(&["drain", "--socket", socket.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let programs = programs_of(daemon.pid().as_raw());
    assert_eq!(
        links_to(&programs),
        [
            ("netns".to_owned(), "refuse_while_draining".to_owned()),
            ("raw_tracepoint".to_owned(), "follow_transitions".to_owned()),
        ],
        "attached by the drain"
    );
    assert!(
        runs(&programs, "seed_established") >= 3,
        "the sweep visited the held connections: {programs:?}"
    );
    assert_eq!(
        netns.connect(loopback(PORT)).unwrap_err().kind(),
        ErrorKind::ConnectionRefused
    );
    drop(held);
    wait_for_status(
        &socket,
        "the drain released",
        |s| s["state"] == "released",
        Duration::from_secs(10),
    );
    let programs = programs_of(daemon.pid().as_raw());
    assert!(runs(&programs, "follow_transitions") > 0, "{programs:?}");
    assert!(runs(&programs, "refuse_while_draining") > 0, "{programs:?}");
    drop(stats);
}

/// Live server-side sockets on the port as `ss` lists them: every state from ESTABLISHED to
/// CLOSING that drainer counts (the test's server holds connections its clients closed, in
/// CLOSE-WAIT). A socket its server closed first ends as a TIME-WAIT mini-socket, which the
/// kernel reports in the state it left (FIN-WAIT-2) until the peer's FIN arrives; the socket
/// itself is gone, so those (timer `timewait`) are left out.
fn ss_live(netns: &TestNetns) -> usize {
    let output = netns
        .command("ss")
        .args(["-Htno"])
        .args(
            [
                "established",
                "fin-wait-1",
                "fin-wait-2",
                "close-wait",
                "last-ack",
                "closing",
            ]
            .iter()
            .flat_map(|state| ["state", state]),
        )
        .arg(format!("( sport = :{PORT} )"))
        .output()
        .expect("ss (iproute2)");
    assert!(output.status.success(), "ss failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.contains("timer:(timewait"))
        .count()
}

/// A server that accepts everything and holds it until [`Holder::close_all`].
struct Holder {
    accepted: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Holder {
    fn start(listener: TcpListener) -> Self {
        // The longest accept queue the namespace allows: a SYN dropped on a full queue would
        // stall its connecting thread for a second-long retransmission.
        listen(&listener, Backlog::MAXCONN).unwrap();
        listener.set_nonblocking(true).unwrap();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => accepted.lock().unwrap().push(stream),
                        Err(err) if err.kind() == ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(1));
                        }
                        Err(err) => panic!("accept: {err}"),
                    }
                }
            })
        };
        Self {
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// Closes every connection, accepted or still queued (the listener goes too).
    fn close_all(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.accepted.lock().unwrap().clear();
    }
}

/// Connecting threads in the storm.
const STORM_THREADS: usize = 8;
/// Connections each storm thread holds at most, and connections the storm opens at most: the
/// test's server holds every one it accepted, so this keeps the test well inside its descriptor
/// limit however fast the machine connects.
const HELD_PER_THREAD: usize = 250;
const STORM_OPENS: usize = 5_000;

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// How long the storm goes on once the drain has started: well inside the accept window below.
const STORM_AFTER_START: Duration = Duration::from_millis(500);

/// Opens connections continuously from [`STORM_THREADS`] threads inside `netns`, closing every
/// third one it opened a moment later, from before `drain` runs until [`STORM_AFTER_START`] after
/// it returned; returns the connections still open and how many connects were refused.
fn storm_across(netns: &TestNetns, drain: impl FnOnce() + Send) -> (Vec<TcpStream>, usize) {
    let stop = AtomicBool::new(false);
    let refused = AtomicUsize::new(0);
    let opened = AtomicUsize::new(0);
    let held = netns.run(|| {
        thread::scope(|scope| {
            // Stops the storm however this closure ends, so a failed check cannot leave the scope
            // waiting forever on threads that never stop.
            let _stop = StopOnDrop(&stop);
            let workers: Vec<_> = (0..STORM_THREADS)
                .map(|_| {
                    scope.spawn(|| {
                        let mut held = Vec::new();
                        let mut n = 0usize;
                        while !stop.load(Ordering::SeqCst) {
                            if opened.load(Ordering::SeqCst) >= STORM_OPENS {
                                thread::sleep(Duration::from_millis(1));
                                continue;
                            }
                            match TcpStream::connect(loopback(PORT)) {
                                Ok(stream) => {
                                    opened.fetch_add(1, Ordering::SeqCst);
                                    held.push(stream);
                                    n += 1;
                                    if n.is_multiple_of(3) || held.len() > HELD_PER_THREAD {
                                        // Closes an older connection: one the sweep may be about
                                        // to visit, or has just visited.
                                        held.swap_remove(held.len() / 2);
                                    }
                                }
                                Err(err) if err.kind() == ErrorKind::ConnectionRefused => {
                                    refused.fetch_add(1, Ordering::SeqCst);
                                    thread::sleep(Duration::from_micros(200));
                                }
                                Err(err) => panic!("connect: {err}"),
                            }
                        }
                        held
                    })
                })
                .collect();
            // The storm runs before the drain starts...
            while opened.load(Ordering::SeqCst) < 3_000 {
                assert!(
                    workers.iter().all(|w| !w.is_finished()),
                    "a storm thread stopped early"
                );
                thread::sleep(Duration::from_millis(5));
            }
            drain();
            // ...and on after it.
            thread::sleep(STORM_AFTER_START);
            stop.store(true, Ordering::SeqCst);
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("storm thread"))
                .collect::<Vec<_>>()
        })
    });
    (held, refused.into_inner())
}

/// Drains through a daemon while a connect storm spans the drain's start; checks the count
/// against `ss` and that the drain ends at exactly zero once everything closed. Returns how many
/// connects the storm saw refused.
fn drain_through_a_storm(accept_for: Option<&str>) -> usize {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("storm");
    let socket = dir.path().join("control.sock");
    let socket_arg = socket.to_str().unwrap();
    let holder = Holder::start(netns.listen(loopback(PORT)));
    let mut args = vec![
        "--port".to_owned(),
        PORT.to_string(),
        "--control-socket".to_owned(),
        socket_arg.to_owned(),
        "--drain-timeout".to_owned(),
        "120s".to_owned(),
    ];
    if let Some(window) = accept_for {
        args.extend(["--accept-for".to_owned(), window.to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = drainer_daemon(&netns, &args);

    let (held, refused) = storm_across(&netns, || {
        let (code, _, stderr) = drainer_client(&["drain", "--socket", socket_arg]);
        assert_eq!(code, 0, "{stderr}");
    });

    // The storm is over: the count must be exactly what ss lists, and stay so.
    let status = status_json(&socket);
    assert_eq!(status["state"], "draining", "{status}");
    assert_eq!(status["count_exact"], true, "{status}");
    let listed = ss_live(&netns);
    assert_eq!(
        status["live"], listed,
        "drainer's count against ss: {status}"
    );
    let at_start = status["live_at_drain_start"].as_u64().unwrap() as usize;
    if accept_for.is_none() {
        // Refusing from the drain's start, the server could only gain the handshakes already
        // under way then: at most one per connecting thread.
        assert!(
            at_start <= listed && listed <= at_start + STORM_THREADS,
            "{at_start} live at the drain's start, {listed} after the storm"
        );
        assert_eq!(
            netns.connect(loopback(PORT)).unwrap_err().kind(),
            ErrorKind::ConnectionRefused
        );
    }

    drop(held);
    holder.close_all();
    let (code, _, stderr) = drainer_client(&["drain", "--wait", "--socket", socket_arg]);
    assert_eq!(code, 0, "the drain did not end at zero: {stderr}");
    let drained = daemon.wait_for("drained: no live connections", Duration::from_secs(5));
    assert!(drained.text.ends_with("live=0"), "{}", drained.text);
    assert_eq!(ss_live(&netns), 0);
    refused
}

#[test]
fn a_connect_storm_across_the_drain_start_is_counted_exactly_and_ends_at_zero() {
    drain_through_a_storm(None);
}

#[test]
fn a_connect_storm_through_the_accept_window_is_counted_exactly_and_ends_at_zero() {
    // The storm ends well inside the window: every connect is accepted, while the sweep runs and
    // after.
    let refused = drain_through_a_storm(Some("5s"));
    assert_eq!(refused, 0, "refused inside the accept window");
}
