//! The engine's count, exactly, on the real kernel: drainer's library attaches its programs to a
//! test namespace where a real server accepts real connections.
use std::{
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use drainer::{
    cgroup,
    netns::Netns,
    programs::{Programs, Target},
};
use drainer_integration::{echo, echo_server, netns::TestNetns, require_root};

const PORT: u16 = 8000;

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], PORT))
}

fn attach(netns: &TestNetns) -> Programs {
    let target_netns = Netns::open(netns.path()).unwrap();
    let cgroup: PathBuf = cgroup::cgroup2_root().unwrap();
    Programs::attach(&Target {
        ports: &[PORT],
        netns: &target_netns,
        cgroup: &cgroup,
    })
    .unwrap()
}

fn live(programs: &Programs) -> i64 {
    programs
        .counts()
        .unwrap()
        .iter()
        .map(|c| c.counters.live)
        .sum()
}

/// Waits until the count equals `expected` (the server's side of a close lags the client's by a
/// round trip), then checks it stays there and that nothing went untracked.
fn assert_count(programs: &Programs, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while live(programs) != expected && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(live(programs), expected);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(live(programs), expected, "the count moved after settling");
    let counts = programs.counts().unwrap();
    assert!(
        counts.iter().all(|c| c.counters.untracked == 0),
        "{counts:?}"
    );
    assert_eq!(
        programs.connections().unwrap().len() as i64,
        expected,
        "map entries disagree with the count"
    );
}

fn connect_many(netns: &TestNetns, n: usize) -> Vec<TcpStream> {
    netns.run(|| {
        (0..n)
            .map(|_| TcpStream::connect(addr()).unwrap())
            .collect()
    })
}

#[test]
fn counts_exactly_a_thousand_held_connections() {
    require_root();
    let netns = TestNetns::create();
    let _server = echo_server(&netns, &[("127.0.0.1", PORT)]);
    let programs = attach(&netns);
    assert_count(&programs, 0);

    let mut held = connect_many(&netns, 1000);
    assert_count(&programs, 1000);
    for stream in held.iter_mut().step_by(97) {
        echo(stream, b"still here").unwrap();
    }
    held.truncate(400);
    assert_count(&programs, 400);
    drop(held);
    assert_count(&programs, 0);
}

#[test]
fn ten_thousand_connect_close_cycles_at_concurrency_50_end_at_exactly_zero() {
    require_root();
    let netns = TestNetns::create();
    let _server = echo_server(&netns, &[("127.0.0.1", PORT)]);
    let programs = attach(&netns);

    thread::scope(|scope| {
        for _ in 0..50 {
            scope.spawn(|| {
                netns.run(|| {
                    for _ in 0..200 {
                        let mut stream = TcpStream::connect(addr()).unwrap();
                        echo(&mut stream, b"ping").unwrap();
                    }
                })
            });
        }
    });
    assert_count(&programs, 0);
}

#[test]
fn counts_connections_that_existed_before_tracking_started_and_sees_them_close() {
    require_root();
    let netns = TestNetns::create();
    let _server = echo_server(&netns, &[("127.0.0.1", PORT)]);
    let mut before = connect_many(&netns, 30);
    for stream in &mut before {
        echo(stream, b"up").unwrap();
    }

    let programs = attach(&netns);
    assert_count(&programs, 30);
    let seeded = programs.connections().unwrap();
    assert!(
        seeded.iter().all(|(_, c)| c.established_ns == 0),
        "seeded connections carry no age"
    );

    before.truncate(20);
    assert_count(&programs, 20);
    let after = connect_many(&netns, 5);
    assert_count(&programs, 25);
    drop(before);
    assert_count(&programs, 5);
    drop(after);
    assert_count(&programs, 0);
}
