//! `drainer run --restart-signal`: a restart hands every new connection to the next generation
//! of the server while the replaced one keeps and drains its own, refuses nobody, steers only
//! while the serving generation listens off the public port, and survives a next generation
//! that crashes, binds the public port itself, or never listens.
use std::{
    io::{BufRead as _, BufReader, ErrorKind},
    net::{Ipv6Addr, SocketAddr, TcpStream},
    os::unix::net::UnixDatagram,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use drainer_harness::{
    balancers::reverse_proxy,
    bpf::{links_to, programs_of},
    clients::{
        StopOnDrop, echo, get_on_new_connections_until, http_request, live_clients,
        live_session_results, loopback, session_lengths,
    },
    drainer::{drainer_command, drainer_run},
    netns::TestNetns,
    process::Process,
    python, require_bpf_fs, require_program, require_root, script,
    servers::live_app_command,
    tempdir::{SYSTEM_PYTHON, TempDir},
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

const PORT: u16 = 8000;
/// Where the reverse proxy in front of the app listens.
const PROXY: u16 = 9000;

/// tests/python/generation_server.py on 127.0.0.1:{port}, which greets each connection with
/// the process and listener that took it.
fn generation_server() -> Vec<String> {
    vec![
        python().display().to_string(),
        script("generation_server.py").display().to_string(),
        "127.0.0.1".into(),
        "{port}".into(),
    ]
}

/// `sh -c SCRIPT` for the server, `$0` the generation server's command: a generation can act
/// on the port it was given ($DRAINER_PORT) before it becomes the server.
fn shell_around_server(script: &str) -> Vec<String> {
    let mut command = vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    command.extend(generation_server());
    command
}

/// A connection to the public port, with the greeting of the generation that took it.
struct Greeted {
    stream: TcpStream,
    pid: i32,
    listener: u16,
    local: u16,
}

fn connect(netns: &TestNetns) -> Greeted {
    connect_to(netns, loopback(PORT))
}

fn connect_to(netns: &TestNetns, addr: SocketAddr) -> Greeted {
    let stream = netns
        .connect(addr)
        .expect("a new connection to the public port");
    stream
        .set_read_timeout(Some(drainer_harness::patience(Duration::from_secs(10))))
        .unwrap();
    let mut greeting = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut greeting)
        .expect("a greeting");
    let field = |name: &str| -> i64 {
        greeting
            .split_whitespace()
            .find_map(|word| word.strip_prefix(name))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in greeting {greeting:?}"))
    };
    Greeted {
        pid: field("pid=") as i32,
        listener: field("listener=") as u16,
        local: field("local=") as u16,
        stream,
    }
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

fn start(netns: &TestNetns, options: &[&str], server: &[String]) -> Process {
    let mut all = vec!["--port", "8000", "--restart-signal", "SIGHUP"];
    all.extend(options);
    let drainer = drainer_run(netns, &all, server);
    drainer.wait_for("listening", Duration::from_secs(20));
    drainer
}

/// Restarts into generation `next`; returns once its new connections go to it (steered, or on
/// the public port itself).
fn restart(drainer: &Process, next: u32) {
    drainer.signal(Signal::SIGHUP);
    drainer
        .wait_for_match(
            |line| {
                line.contains(&format!("go to generation {next} on port"))
                    || line.contains(&format!("generation {next} listens on port {PORT} itself"))
            },
            Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("generation {next} never took over:\n{}", drainer.output()));
}

/// The kinds of BPF link drainer holds attached, with their programs.
fn attached(drainer: &Process) -> Vec<(String, String)> {
    links_to(&programs_of(drainer.pid().as_raw()))
}

#[test]
fn new_connections_go_to_the_next_generation_while_the_old_one_keeps_and_drains_its_own() {
    require_root();
    let netns = TestNetns::create();
    let mut drainer = start(&netns, &[], &generation_server());
    let mut held = connect(&netns);
    assert_eq!((held.listener, held.local), (PORT, PORT));
    let first = held.pid;

    restart(&drainer, 2);
    let mut next = connect(&netns);
    assert_ne!(next.pid, first, "the new connection went to generation 1");
    assert_ne!(
        next.listener, PORT,
        "generation 2 was given the port generation 1 held"
    );
    assert_eq!(
        next.local, PORT,
        "a steered connection keeps the public port as its local port"
    );
    // The old generation serves its connection as before, and is still running for it.
    echo(&mut held.stream, b"after the restart").unwrap();
    assert!(alive(first));
    drainer.wait_for("generation 1: 1 live", Duration::from_secs(5));

    // Its last connection closes: it is released, though generation 2's is still open.
    drop(held);
    drainer.wait_for(
        "generation 1 released (its connections have all closed): sending SIGTERM",
        Duration::from_secs(10),
    );
    drainer.wait_for("restart done, generation 2 serves", Duration::from_secs(10));
    assert!(!alive(first), "generation 1 still runs");
    echo(&mut next.stream, b"still served").unwrap();
    assert_eq!(connect(&netns).pid, next.pid);

    drop(next);
    drainer.signal(Signal::SIGTERM);
    drainer.wait_for("drained", Duration::from_secs(10));
    drainer.wait(Duration::from_secs(10));
}

#[test]
fn restarts_in_a_row_alternate_ports_and_steer_only_while_the_server_is_off_the_public_port() {
    require_root();
    require_program("bpftool", "bpftool");
    let netns = TestNetns::create();
    let mut drainer = start(&netns, &[], &generation_server());
    assert_eq!(attached(&drainer), [], "attached while serving");
    let steering = ("netns".to_owned(), "steer_to_next_generation".to_owned());

    let mut pids = vec![connect(&netns).pid];
    for next in 2..=4 {
        restart(&drainer, next);
        drainer.wait_for(
            &format!("restart done, generation {next} serves"),
            Duration::from_secs(10),
        );
        let greeted = connect(&netns);
        assert!(!pids.contains(&greeted.pid), "an old generation answered");
        pids.push(greeted.pid);
        // Generation 2 and 4 find the public port taken, generation 3 finds it free again.
        let on_public_port = next % 2 == 1;
        assert_eq!(
            greeted.listener == PORT,
            on_public_port,
            "generation {next}"
        );
        assert_eq!(greeted.local, PORT);
        let expected = if on_public_port {
            vec![]
        } else {
            vec![steering.clone()]
        };
        assert_eq!(attached(&drainer), expected, "after restart {}", next - 1);
        for old in &pids[..pids.len() - 1] {
            assert!(!alive(*old), "generation pid {old} still runs");
        }
    }

    drainer.signal(Signal::SIGTERM);
    drainer.wait_for("drained", Duration::from_secs(10));
    drainer.wait(Duration::from_secs(10));
}

/// The old generation serves on, refusing nobody, whatever became of the next one.
fn serves_on(netns: &TestNetns, drainer: &Process, pid: i32) {
    for _ in 0..20 {
        let mut greeted = connect(netns);
        assert_eq!(greeted.pid, pid, "{}", drainer.output());
        echo(&mut greeted.stream, b"hello").unwrap();
    }
}

#[test]
fn a_next_generation_that_crashes_at_start_is_reported_and_the_old_one_serves_on() {
    require_root();
    require_program("bpftool", "bpftool");
    let netns = TestNetns::create();
    // Generation 1 gets the public port; the next one, a port of its own, and crashes.
    let server = shell_around_server(
        r#"[ "$DRAINER_PORT" = 8000 ] || { echo crashing; exit 3; }; exec "$0" "$@""#,
    );
    let drainer = start(&netns, &[], &server);
    let first = connect(&netns).pid;
    drainer.signal(Signal::SIGHUP);
    let line = drainer.wait_for("generation 2 exited with", Duration::from_secs(20));
    assert!(line.text.contains("exit code 3"), "{}", line.text);
    assert!(
        line.text.contains("generation 1 serves on"),
        "{}",
        line.text
    );
    serves_on(&netns, &drainer, first);
    assert_eq!(attached(&drainer), [], "something stayed attached");

    // A restart signal later tries again.
    drainer.signal(Signal::SIGHUP);
    drainer.wait_for_nth("generation 2 started", 2, Duration::from_secs(5));
}

#[test]
fn a_next_generation_that_binds_the_public_port_itself_is_reported_and_the_old_one_serves_on() {
    require_root();
    let netns = TestNetns::create();
    // Ignores the port it is given: every generation binds 8000.
    let mut server = generation_server();
    *server.last_mut().unwrap() = PORT.to_string();
    let drainer = start(&netns, &[], &server);
    let first = connect(&netns).pid;
    drainer.signal(Signal::SIGHUP);
    let line = drainer.wait_for("generation 2 exited with", Duration::from_secs(20));
    assert!(
        line.text
            .contains("a server that binds port(s) 8000 itself rather than the port it was given finds them taken"),
        "{}",
        line.text
    );
    serves_on(&netns, &drainer, first);
}

#[test]
fn a_next_generation_that_never_listens_is_stopped_at_the_ready_timeout() {
    require_root();
    let netns = TestNetns::create();
    let server =
        shell_around_server(r#"[ "$DRAINER_PORT" = 8000 ] || exec sleep 3600; exec "$0" "$@""#);
    let drainer = start(&netns, &["--ready-timeout", "1s"], &server);
    let first = connect(&netns).pid;
    drainer.signal(Signal::SIGHUP);
    let started = drainer.wait_for("generation 2 started", Duration::from_secs(5));
    let next: i32 = started
        .text
        .split("pid=")
        .nth(1)
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {:?}", started.text));
    drainer.wait_for("did not listen on port", Duration::from_secs(10));
    assert!(
        !alive(next),
        "generation 2 (pid {next}) was not stopped:\n{}",
        drainer.output()
    );
    serves_on(&netns, &drainer, first);
}

/// Each generation is released at its own zero: the old one while the new one still has a
/// connection, the new one once that closes.
#[test]
fn a_stop_during_a_restart_drains_each_generation_to_its_own_zero_and_exits_with_the_newest() {
    require_root();
    let netns = TestNetns::create();
    let mut drainer = start(&netns, &[], &generation_server());
    let old = connect(&netns);
    restart(&drainer, 2);
    let new = connect(&netns);
    assert_ne!(old.pid, new.pid);

    drainer.signal(Signal::SIGTERM);
    drainer.wait_for("draining: refusing new connections", Duration::from_secs(5));
    assert_eq!(
        netns.connect(loopback(PORT)).unwrap_err().kind(),
        ErrorKind::ConnectionRefused
    );
    drop(old);
    drainer.wait_for(
        "generation 1 released (its connections have all closed)",
        Duration::from_secs(10),
    );
    drainer.wait_for("restart done, generation 2 serves", Duration::from_secs(10));
    let mut new = new;
    echo(&mut new.stream, b"still served").unwrap();
    assert!(alive(new.pid));
    assert!(
        !drainer.output().contains("drained"),
        "generation 2 was released with a live connection:\n{}",
        drainer.output()
    );
    drop(new);
    drainer.wait_for("drained", Duration::from_secs(10));
    let status = drainer.wait(Duration::from_secs(10));
    // Python dies of the SIGTERM it does not handle: 128 + 15, the newest generation's status.
    assert_eq!(status.code(), Some(143), "{}", drainer.output());
}

/// The replaced generation is drained as a stop drains: with `--release-when-idle` it is released
/// once the connections it has left are idle, judged by its own connections alone: a busy one
/// holds it, the serving generation's busy one does not.
#[test]
fn a_replaced_generation_is_released_once_its_own_connections_are_idle() {
    require_root();
    let netns = TestNetns::create();
    // Ten times the talkers' period, however slow the machine: a busy connection never looks
    // idle.
    let idle_for = drainer_harness::patience(Duration::from_secs(1));
    let idle_for_arg = format!("{}ms", idle_for.as_millis());
    let drainer = start(
        &netns,
        &["--release-when-idle", &idle_for_arg],
        &generation_server(),
    );
    let idle = connect(&netns);
    let mut busy = connect(&netns);
    let talk = |stream: &mut TcpStream, until: &AtomicBool| {
        while !until.load(Ordering::Relaxed) {
            echo(stream, b"talking").unwrap();
            thread::sleep(Duration::from_millis(100));
        }
    };
    let (quiet_one, quiet_two) = (AtomicBool::new(false), AtomicBool::new(false));
    thread::scope(|scope| {
        let (_quiet_one, _quiet_two) = (StopOnDrop(&quiet_one), StopOnDrop(&quiet_two));
        scope.spawn(|| talk(&mut busy.stream, &quiet_one));
        restart(&drainer, 2);
        let mut serving = connect(&netns);
        assert_ne!(serving.pid, idle.pid);
        let quiet_two = &quiet_two;
        scope.spawn(move || talk(&mut serving.stream, quiet_two));

        // While one of its connections carries data, generation 1 is not released, however
        // long its other one stays idle.
        drainer.wait_for("restart: generation 1: 2 live", Duration::from_secs(5));
        thread::sleep(drainer_harness::patience(Duration::from_secs(2)));
        assert!(
            !drainer.output().contains("generation 1 released"),
            "generation 1 was released while a connection of its own carried data:\n{}",
            drainer.output()
        );
        assert!(alive(idle.pid));

        // Its connections fall silent; the serving generation's goes on talking.
        quiet_one.store(true, Ordering::Relaxed);
        drainer.wait_for(
            &format!(
                "generation 1 released (the 2 connection(s) it has left have all been idle for \
                 {:.1}s or more)",
                idle_for.as_secs_f64()
            ),
            Duration::from_secs(10),
        );
        drainer.wait_for("restart done, generation 2 serves", Duration::from_secs(10));
        assert!(!alive(idle.pid));
        quiet_two.store(true, Ordering::Relaxed);
    });
}

/// The replaced generation's drain deadline names its stragglers, and only its own: the serving
/// generation's connection, on the same port, is not one.
#[test]
fn a_replaced_generation_cut_by_the_deadline_names_its_own_stragglers() {
    require_root();
    let netns = TestNetns::create();
    let drainer = start(&netns, &["--drain-timeout", "2s"], &generation_server());
    let held = connect(&netns);
    restart(&drainer, 2);
    let serving = connect(&netns);
    let held_peer = held.stream.local_addr().unwrap();
    let serving_peer = serving.stream.local_addr().unwrap();

    let report = drainer.wait_for(
        "restart: generation 1's drain deadline passed with 1 connections live: ",
        Duration::from_secs(10),
    );
    assert!(
        report.text.contains(&format!("{held_peer}→:{PORT}")),
        "the report does not name generation 1's connection {held_peer}: {}",
        report.text
    );
    assert!(
        !report.text.contains(&serving_peer.to_string()),
        "the report names generation 2's connection {serving_peer}: {}",
        report.text
    );
    drainer.wait_for(
        "generation 1 released (the drain deadline passed)",
        Duration::from_secs(5),
    );
    drainer.wait_for("restart done, generation 2 serves", Duration::from_secs(10));
    assert!(!alive(held.pid));
    assert!(alive(serving.pid));
}

/// drainer fails open with a restarted server too. Killed while the serving generation listens off
/// the public port, it leaves steering attached (pinned), so that server keeps getting the public
/// port's new connections; the next drainer for the port detaches what was left.
#[test]
fn a_drainer_killed_while_steering_leaves_the_server_its_new_connections() {
    require_root();
    require_bpf_fs();
    let netns = TestNetns::create();
    let mut drainer = start(&netns, &[], &generation_server());
    restart(&drainer, 2);
    drainer.wait_for("restart done, generation 2 serves", Duration::from_secs(10));
    let mut serving = connect(&netns);
    assert_ne!(
        serving.listener, PORT,
        "generation 2 was given the public port"
    );

    drainer.signal(Signal::SIGKILL);
    drainer.wait(Duration::from_secs(10));
    for _ in 0..20 {
        let mut greeted = connect(&netns);
        assert_eq!(greeted.pid, serving.pid, "a new connection went elsewhere");
        echo(&mut greeted.stream, b"served without drainer").unwrap();
    }

    let next = start(&netns, &[], &generation_server());
    next.wait_for(
        "detached the steering a drainer that died left",
        Duration::from_secs(5),
    );
    let fresh = connect(&netns);
    assert_ne!(
        fresh.pid, serving.pid,
        "the steering left behind still steers"
    );
    assert_eq!(fresh.listener, PORT);
    // The server left unguarded keeps the connections it has.
    echo(&mut serving.stream, b"still served").unwrap();
}

/// A server of several ports: each guarded port gets a port of the generation's own, named in
/// its arguments by `{port:P}`, and is steered to that generation's listener on it; the next
/// restart finds them all free again and steers nothing.
#[test]
fn a_server_of_several_ports_is_restarted_on_all_of_them() {
    require_root();
    require_program("bpftool", "bpftool");
    const SECOND: u16 = 8001;
    let netns = TestNetns::create();
    let mut server = generation_server();
    server.push("{port:8001}".into());
    let mut drainer = drainer_run(
        &netns,
        &[
            "--port",
            "8000",
            "--port",
            "8001",
            "--restart-signal",
            "SIGHUP",
        ],
        &server,
    );
    drainer.wait_for("listening", Duration::from_secs(20));
    let mut held = [connect(&netns), connect_to(&netns, loopback(SECOND))];
    assert_eq!(
        held.iter().map(|g| g.listener).collect::<Vec<_>>(),
        [PORT, SECOND]
    );

    drainer.signal(Signal::SIGHUP);
    drainer.wait_for_nth("go to generation 2 on port", 2, Duration::from_secs(20));
    for public in [PORT, SECOND] {
        let greeted = connect_to(&netns, loopback(public));
        assert_ne!(
            greeted.pid, held[0].pid,
            "port {public} went to generation 1"
        );
        assert!(
            greeted.listener != PORT && greeted.listener != SECOND,
            "generation 2 was given a guarded port: {}",
            greeted.listener
        );
        assert_eq!(greeted.local, public);
    }
    assert_ne!(
        connect(&netns).listener,
        connect_to(&netns, loopback(SECOND)).listener,
        "both ports were steered to one listener"
    );
    for greeted in &mut held {
        echo(&mut greeted.stream, b"after the restart").unwrap();
    }
    drainer.wait_for("generation 1: 2 live", Duration::from_secs(5));
    drop(held);
    drainer.wait_for("restart done, generation 2 serves", Duration::from_secs(10));

    restart(&drainer, 3);
    drainer.wait_for("restart done, generation 3 serves", Duration::from_secs(10));
    for public in [PORT, SECOND] {
        assert_eq!(connect_to(&netns, loopback(public)).listener, public);
    }
    assert_eq!(
        attached(&drainer),
        [],
        "steering stayed with the server on its ports"
    );
    drainer.signal(Signal::SIGTERM);
    drainer.wait_for("drained", Duration::from_secs(10));
    drainer.wait(Duration::from_secs(10));
}

/// The pid in the app's `GET /health` answer, on a new connection to 127.0.0.1:`port`.
fn health_pid(netns: &TestNetns, port: u16) -> i64 {
    let (code, body) = http_request(
        netns.connect(loopback(port)).unwrap(),
        "GET",
        "/health",
        &["Connection: close"],
    );
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pid in {body}"))
}

/// The deploy this exists for: uvicorn with live WebSocket sessions behind a local nginx, on one
/// host, restarted while the sessions stream and new requests keep coming.
#[test]
fn behind_a_reverse_proxy_a_restart_fails_no_request_and_every_session_ends_normally() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("restart-proxy");
    let _proxy = reverse_proxy(&netns, dir.path(), PROXY, PORT);
    let mut server = live_app_command(PORT);
    // The port it listens on, which a restart gives each generation.
    *server.last_mut().unwrap() = "{port}".into();
    let mut drainer = drainer_run(
        &netns,
        &["--port", "8000", "--restart-signal", "SIGHUP"],
        &server,
    );
    drainer.wait_for("Uvicorn running on", Duration::from_secs(30));
    let first = health_pid(&netns, PROXY);

    // Longer than the next generation takes to start, wherever the tests run.
    let lengths = session_lengths(8, Duration::from_secs(4), Duration::from_secs(8));
    let mut sessions = live_clients(&netns, PROXY, &lengths, Duration::from_secs(30));
    let stop = AtomicBool::new(false);
    let requests = thread::scope(|scope| {
        let requests = scope
            .spawn(|| get_on_new_connections_until(&netns, loopback(PROXY), "/health", 50, &stop));
        let _stop = StopOnDrop(&stop);
        drainer.signal(Signal::SIGHUP);
        drainer.wait_for("go to generation 2 on port", Duration::from_secs(60));
        drainer.wait_for("restart done, generation 2 serves", Duration::from_secs(60));
        stop.store(true, Ordering::Relaxed);
        requests.join().unwrap()
    });
    assert!(
        requests.failures.is_empty(),
        "{} of {} requests failed: {:?}\n{}",
        requests.failures.len(),
        requests.answered as usize + requests.failures.len(),
        requests.failures,
        drainer.output()
    );
    assert!(requests.answered > 0);

    // uvicorn closes live sessions with 1012 when it shuts down: all ended on their own first.
    for result in live_session_results(&mut sessions, lengths.len(), Duration::from_secs(30)) {
        assert_eq!(result["code"], 1000, "{result}\n{}", drainer.output());
        assert_eq!(result["received"], result["expected"], "{result}");
    }
    let released = drainer.wait_for("generation 1 released", Duration::from_secs(5));
    assert!(
        released.text.contains("its connections have all closed"),
        "{}",
        released.text
    );
    let second = health_pid(&netns, PROXY);
    assert_ne!(second, first, "generation 1 still answers");

    drainer.signal(Signal::SIGTERM);
    drainer.wait_for("drained", Duration::from_secs(10));
    drainer.wait(Duration::from_secs(30));
}

#[test]
fn a_dual_stack_server_gets_both_families_after_a_restart() {
    require_root();
    let netns = TestNetns::create();
    let mut server = generation_server();
    server[2] = "dual".into();
    let mut drainer = start(&netns, &[], &server);
    let ipv6 = SocketAddr::from((Ipv6Addr::LOCALHOST, PORT));
    let (old4, old6) = (connect(&netns), connect_to(&netns, ipv6));
    assert_eq!(old4.pid, old6.pid);

    restart(&drainer, 2);
    drainer.wait_for("holds 1 listener(s) on port", Duration::from_secs(5));
    assert!(
        drainer.output().contains(": IPv6 and IPv4"),
        "{}",
        drainer.output()
    );
    let (new4, new6) = (connect(&netns), connect_to(&netns, ipv6));
    for new in [&new4, &new6] {
        assert_ne!(new.pid, old4.pid, "a new connection went to generation 1");
        assert_eq!(new.local, PORT);
    }
    drainer.wait_for("generation 1: 2 live", Duration::from_secs(5));
    drop((old4, old6));
    drainer.wait_for("restart done, generation 2 serves", Duration::from_secs(10));
    drop((new4, new6));
    drainer.signal(Signal::SIGTERM);
    drainer.wait(Duration::from_secs(10));
}

#[test]
fn a_server_run_as_another_user_is_restarted_as_that_user_without_capabilities() {
    require_root();
    let netns = TestNetns::create();
    // nobody runs it: a copy it can reach, on the system's python.
    let dir = TempDir::create("restart-user");
    let server = [
        SYSTEM_PYTHON.to_owned(),
        dir.script_copy("generation_server.py")
            .display()
            .to_string(),
        "127.0.0.1".into(),
        "{port}".into(),
    ];
    let mut drainer = start(&netns, &["--user", "nobody"], &server);
    let old = connect(&netns);
    restart(&drainer, 2);
    let new = connect(&netns);
    assert_ne!(new.pid, old.pid);
    let status = std::fs::read_to_string(format!("/proc/{}/status", new.pid)).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(field("Uid:"), vec![nobody.uid.to_string(); 4]);
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(set), ["0000000000000000"], "generation 2's {set}");
    }
    drop(old);
    drainer.wait_for("restart done, generation 2 serves", Duration::from_secs(10));
    drop(new);
    drainer.signal(Signal::SIGTERM);
    drainer.wait(Duration::from_secs(10));
}

/// Under a `Type=notify` unit a restart is a reload: RELOADING=1 (with the monotonic time
/// `Type=notify-reload` asks for) when the next generation starts, READY=1 once it serves.
#[test]
fn systemd_hears_reloading_when_a_restart_starts_and_ready_when_the_next_generation_serves() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("restart-notify");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(drainer_harness::patience(Duration::from_secs(20))))
        .unwrap();
    let mut command = drainer_command(
        &netns,
        &["run", "--port", "8000", "--restart-signal", "SIGHUP", "--"],
    );
    command
        .args(generation_server())
        .env("NOTIFY_SOCKET", &notify_path);
    let mut drainer = Process::spawn("drainer", command);
    drainer.wait_for("listening", Duration::from_secs(20));
    let next_message = || {
        let mut buffer = [0u8; 4096];
        let n = notify.recv(&mut buffer).expect("a notification");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    };
    let started = next_message();
    assert!(started.starts_with("READY=1\n"), "{started:?}");

    drainer.signal(Signal::SIGHUP);
    let reloading = next_message();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert!(
        reloading.contains("STATUS=restarting: generation 2 starts on port"),
        "{reloading:?}"
    );
    let ready = next_message();
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(
        ready.contains("STATUS=serving: generation 2; generation 1 drains"),
        "{ready:?}"
    );
    let done = next_message();
    assert_eq!(done, "STATUS=serving: generation 2\n");

    drainer.signal(Signal::SIGTERM);
    drainer.wait(Duration::from_secs(10));
}
