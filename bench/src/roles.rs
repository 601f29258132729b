//! The processes a benchmark starts besides drainer: servers, the supervised child, and the
//! poll-based drainer the release latency is compared against. Each runs as `drainer-bench <role>`.
use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use drainer::kernel::SocketTable;
use nix::sys::signal::{SigHandler, Signal, kill, signal};

use crate::clock::monotonic_ns;

/// Connection-rate server: per connection, read a 16-byte request, answer 16 bytes (its pid,
/// padded: which server answered, when one replaces another), close. `workers` threads accept on
/// the one listener.
pub fn serve_requests(addr: SocketAddr, workers: usize) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    let answer = format!("{:<16}", std::process::id());
    println!("listening");
    thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut request = [0u8; 16];
                while let Ok((mut stream, _)) = listener.accept() {
                    if stream.read_exact(&mut request).is_ok() {
                        let _ = stream.write_all(answer.as_bytes());
                    }
                }
            });
        }
    });
    Ok(())
}

/// Throughput sink: reads and discards; one thread per connection.
pub fn serve_sink(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    println!("listening");
    for stream in listener.incoming() {
        let mut stream = stream?;
        thread::spawn(move || {
            let mut buffer = vec![0u8; 256 * 1024];
            while matches!(stream.read(&mut buffer), Ok(n) if n > 0) {}
        });
    }
    Ok(())
}

/// The server side of the scale runs, without a descriptor per connection: `listeners`
/// SO_REUSEPORT listeners with deep backlogs that never accept. A connection in an accept queue
/// is fully established — the kernel, `ss` and drainer all count it.
pub fn serve_hold(addr: SocketAddr, listeners: usize) -> Result<()> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt,
    };
    let SocketAddr::V4(v4) = addr else {
        anyhow::bail!("IPv4 only")
    };
    let mut held = Vec::new();
    for _ in 0..listeners {
        let listener = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        setsockopt(&listener, sockopt::ReusePort, &true)?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&listener),
            &SockaddrIn::from(v4),
        )?;
        // SAFETY: listen(2) on our own socket; nix caps the backlog at SOMAXCONN's old value.
        if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 65535) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        held.push(listener);
    }
    println!("listening");
    loop {
        // SAFETY: pause(2) has no preconditions.
        unsafe { libc::pause() };
    }
}

/// The client side of the scale runs, in a [`ClientSide`](crate::bed::ClientSide)'s namespace:
/// `count` connections from its source addresses starting at index `first_source`, held open
/// until killed. Prints `held N`.
pub fn hold_clients(to: SocketAddr, count: usize, first_source: usize) -> Result<()> {
    raise_fd_limit();
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let source = crate::load::source_in(crate::bed::CLIENT_SIDE_NET, first_source + i / 50_000);
        // A SYN dropped at a momentarily full queue costs a retransmission, not the run.
        let stream = loop {
            match connect_from(source, to) {
                Ok(stream) => break stream,
                Err(err) if err.kind() == ErrorKind::AddrNotAvailable => {
                    anyhow::bail!("out of ports at {source}")
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        };
        held.push(stream);
    }
    println!("held {}", held.len());
    loop {
        // SAFETY: pause(2) has no preconditions.
        unsafe { libc::pause() };
    }
}

static STOPPED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_stop(_: libc::c_int) {
    STOPPED.store(true, Ordering::SeqCst);
}

/// The supervised server of the release-latency runs: accepts one connection; when its client
/// closes, closes it and prints `closed <ns>`; on SIGTERM prints `signalled <ns>` and exits.
/// Both times are CLOCK_MONOTONIC, so their difference is the release latency.
pub fn child(addr: SocketAddr) -> Result<()> {
    // SAFETY: the handler only stores to an atomic.
    unsafe { signal(Signal::SIGTERM, SigHandler::Handler(note_stop))? };
    let listener = TcpListener::bind(addr)?;
    println!("listening");
    let (mut stream, _) = listener.accept()?;
    let mut buffer = [0u8; 64];
    while matches!(stream.read(&mut buffer), Ok(n) if n > 0) {}
    drop(stream);
    let closed = monotonic_ns();
    // Wait for the signal without sleeping through it: pause(2) returns when it arrives.
    while !STOPPED.load(Ordering::SeqCst) {
        // SAFETY: pause(2) has no preconditions.
        unsafe { libc::pause() };
    }
    let signalled = monotonic_ns();
    println!("closed {closed}");
    println!("signalled {signalled}");
    Ok(())
}

/// The peer drainer: what a preStop loop, Istio or Envoy Gateway do — on SIGTERM, count the
/// port's established connections every 100 ms (here through sock_diag, as `ss` does) and pass
/// the signal on at zero.
pub fn poll_run(port: u16, command: &[String]) -> Result<()> {
    // SAFETY: the handler only stores to an atomic.
    unsafe { signal(Signal::SIGTERM, SigHandler::Handler(note_stop))? };
    let diag = SocketTable::open()?;
    let child = Command::new(&command[0])
        .args(&command[1..])
        .process_group(0)
        .spawn()?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    println!("started");
    while !STOPPED.load(Ordering::SeqCst) {
        // SAFETY: pause(2) has no preconditions.
        unsafe { libc::pause() };
    }
    println!("polling");
    while !diag.sockets(&[port])?.is_empty() {
        thread::sleep(Duration::from_millis(100));
    }
    kill(pid, Signal::SIGTERM)?;
    let _ = child.wait_with_output();
    Ok(())
}

/// Connects with `source` as the local address, so many loopback addresses widen the 4-tuple space.
pub fn connect_from(source: std::net::IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let from = nix::sys::socket::SockaddrIn::from(std::net::SocketAddrV4::new(
        match source {
            std::net::IpAddr::V4(v4) => v4,
            std::net::IpAddr::V6(_) => return Err(ErrorKind::Unsupported.into()),
        },
        0,
    ));
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::IpBindAddressNoPort,
        &true,
    )?;
    nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&socket), &from)?;
    let to = match to {
        SocketAddr::V4(v4) => nix::sys::socket::SockaddrIn::from(v4),
        SocketAddr::V6(_) => return Err(ErrorKind::Unsupported.into()),
    };
    nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&socket), &to)?;
    Ok(TcpStream::from(socket))
}

/// The soft descriptor limit raised to the hard one (raising the hard limit needs
/// CAP_SYS_RESOURCE, which these machines do not grant); returns it.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    hard
}
