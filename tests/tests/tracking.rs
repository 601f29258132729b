//! The engine's count, exactly, on the real kernel: drainer's library attaches its programs, as a
//! drain's start does, to a test namespace where a real server accepts real connections.
use std::{
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use drainer::kernel::{Kernel, Netns, SocketTable, Target};
use drainer_harness::{
    clients::{connect_many, echo, loopback},
    netns::TestNetns,
    patience, require_root,
    servers::echo_server,
};

const PORT: u16 = 8000;

/// The programs loaded and attached as at a drain's start (without refusing): from then on the
/// counters are the count.
fn attach(netns: &TestNetns) -> Kernel {
    let target_netns = Netns::open(netns.path()).unwrap();
    let mut kernel = Kernel::load(&Target {
        ports: &[PORT],
        netns: &target_netns,
        privileges: &[],
        restarts: false,
    })
    .unwrap();
    kernel.start_draining(false).unwrap();
    kernel
}

/// Live sockets on the port as sock_diag (the `ss` interface) lists them: an independent count.
fn listed(netns: &TestNetns) -> usize {
    netns.run(|| SocketTable::open().unwrap().sockets(&[PORT]).unwrap().len())
}

fn live(programs: &Kernel) -> i64 {
    programs.counts().unwrap().total().live
}

/// Waits until the count equals `expected` (the server's side of a close lags the client's by a
/// round trip), then checks it stays there, that nothing went untracked, and that sock_diag
/// lists as many live sockets on the port.
fn assert_count(netns: &TestNetns, programs: &Kernel, expected: i64) {
    let deadline = Instant::now() + patience(Duration::from_secs(10));
    while live(programs) != expected && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(live(programs), expected);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(live(programs), expected, "the count moved after settling");
    let counts = programs.counts().unwrap();
    assert!(counts.total().exact, "{counts:?}");
    assert_eq!(
        listed(netns) as i64,
        expected,
        "sock_diag disagrees with the count"
    );
}

/// Closes with a reset (SO_LINGER 0), the abortive close path.
fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt(2) on a valid socket with a correctly sized option.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
}

#[test]
fn counts_exactly_a_thousand_held_connections() {
    require_root();
    let netns = TestNetns::create();
    let _server = echo_server(&netns, &[("127.0.0.1", PORT)]);
    let programs = attach(&netns);
    assert_count(&netns, &programs, 0);

    let mut held = connect_many(&netns, loopback(PORT), 1000);
    assert_count(&netns, &programs, 1000);
    for stream in held.iter_mut().step_by(97) {
        echo(stream, b"still here").unwrap();
    }
    held.truncate(400);
    assert_count(&netns, &programs, 400);
    drop(held);
    assert_count(&netns, &programs, 0);
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
                        let mut stream = TcpStream::connect(loopback(PORT)).unwrap();
                        echo(&mut stream, b"ping").unwrap();
                    }
                })
            });
        }
    });
    assert_count(&netns, &programs, 0);
}

#[test]
fn counts_connections_that_existed_before_tracking_started_and_sees_them_close() {
    require_root();
    let netns = TestNetns::create();
    let _server = echo_server(&netns, &[("127.0.0.1", PORT)]);
    let mut before = connect_many(&netns, loopback(PORT), 30);
    for stream in &mut before {
        echo(stream, b"up").unwrap();
    }

    let programs = attach(&netns);
    assert_count(&netns, &programs, 30);

    before.truncate(20);
    assert_count(&netns, &programs, 20);
    let after = connect_many(&netns, loopback(PORT), 5);
    assert_count(&netns, &programs, 25);
    drop(before);
    assert_count(&netns, &programs, 5);
    drop(after);
    assert_count(&netns, &programs, 0);
}

#[test]
fn resets_and_orderly_closes_both_end_a_connection() {
    require_root();
    let netns = TestNetns::create();
    let _server = echo_server(&netns, &[("127.0.0.1", PORT)]);
    let programs = attach(&netns);
    let mut held = connect_many(&netns, loopback(PORT), 20);
    for stream in &mut held {
        echo(stream, b"up").unwrap();
    }
    assert_count(&netns, &programs, 20);
    for stream in held.drain(..10) {
        reset(stream);
    }
    assert_count(&netns, &programs, 10);
    drop(held);
    assert_count(&netns, &programs, 0);
}

/// A client socket bound to the guarded port number (on another address) connects out: it is not
/// a connection to the server, and neither its opening nor its close may move the count.
#[test]
fn an_outbound_connection_from_the_guarded_port_is_never_counted() {
    require_root();
    let netns = TestNetns::create();
    let _server = echo_server(&netns, &[("127.0.0.1", PORT)]);
    let other = netns.listen(loopback(9000));
    let programs = attach(&netns);
    let inbound = connect_many(&netns, loopback(PORT), 3);
    assert_count(&netns, &programs, 3);

    let outbound = netns.run(|| {
        bound_client(
            SocketAddr::from(([127, 0, 0, 2], PORT)),
            other.local_addr().unwrap(),
        )
    });
    let (accepted, _) = other.accept().unwrap();
    thread::sleep(Duration::from_millis(50));
    assert_eq!(live(&programs), 3, "the outbound connection was counted");
    drop(outbound);
    drop(accepted);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        live(&programs),
        3,
        "the outbound connection's close was counted"
    );
    drop(inbound);
    assert_count(&netns, &programs, 0);
}

/// A TCP socket bound to `local` and connected to `peer`.
fn bound_client(local: SocketAddr, peer: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd as _;

    let to_sockaddr = |addr: SocketAddr| {
        let SocketAddr::V4(v4) = addr else {
            panic!("IPv4 only")
        };
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        }
    };
    let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; results are checked.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket");
        let stream = TcpStream::from_raw_fd(fd);
        let local = to_sockaddr(local);
        assert_eq!(libc::bind(fd, (&raw const local).cast(), len), 0, "bind");
        let peer = to_sockaddr(peer);
        assert_eq!(
            libc::connect(fd, (&raw const peer).cast(), len),
            0,
            "connect"
        );
        stream
    }
}

/// Attaching while connections open and close as fast as they can: the sweep and the tracepoint
/// race over the same sockets, and the count must still end exact.
#[test]
fn attaching_in_the_middle_of_heavy_churn_still_counts_exactly() {
    require_root();
    let netns = TestNetns::create();
    let _server = echo_server(&netns, &[("127.0.0.1", PORT)]);
    let held = connect_many(&netns, loopback(PORT), 100);
    let stop = AtomicBool::new(false);
    let programs = thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                netns.run(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let mut stream = TcpStream::connect(loopback(PORT)).unwrap();
                        echo(&mut stream, b"churn").unwrap();
                    }
                })
            });
        }
        thread::sleep(Duration::from_millis(300));
        let programs = attach(&netns);
        thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        programs
    });
    assert_count(&netns, &programs, 100);
    drop(held);
    assert_count(&netns, &programs, 0);
}
