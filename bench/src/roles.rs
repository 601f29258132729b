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
use drainer::sock_diag::SockDiag;
use nix::sys::signal::{SigHandler, Signal, kill, signal};

use crate::clock::monotonic_ns;

/// Connection-rate server: per connection, read a 16-byte request, answer 16 bytes, close.
/// `workers` threads accept on the one listener.
pub fn serve_requests(addr: SocketAddr, workers: usize) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    println!("listening");
    thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut request = [0u8; 16];
                while let Ok((mut stream, _)) = listener.accept() {
                    if stream.read_exact(&mut request).is_ok() {
                        let _ = stream.write_all(b"0123456789abcdef");
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

/// Holds every accepted connection open, for the scale runs; prints the count every 10,000.
pub fn serve_hold(addr: SocketAddr) -> Result<()> {
    raise_fd_limit();
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    // A deep backlog: the scale run connects far faster than one thread accepts.
    // SAFETY: listen(2) on our own socket.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 65535) };
    println!("listening");
    let mut held = Vec::new();
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => held.push(stream),
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
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
    let diag = SockDiag::open()?;
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

/// As high as the kernel allows (fs.nr_open), for the scale runs.
pub fn raise_fd_limit() {
    let limit = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(1 << 20);
    let _ =
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit, limit);
}
