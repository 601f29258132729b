//! Load generators: connection churn and bulk transfer, run on threads inside the bed's namespace.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::roles::connect_from;

/// Client source addresses 127.0.2.2, 127.0.2.3, …: each adds a full ephemeral port range.
pub fn source(index: usize) -> IpAddr {
    source_in([127, 0], index)
}

/// The `index`th client source address in the /16 `net`: net.2.2, net.2.3, … net.2.251, net.3.2, …
pub fn source_in(net: [u8; 2], index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        net[0],
        net[1],
        (2 + index / 250) as u8,
        (2 + index % 250) as u8,
    ))
}

/// Connections per second for `duration`: connect, 16-byte request, 16-byte answer, close.
pub fn connection_rate(to: SocketAddr, threads: usize, duration: Duration) -> f64 {
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    thread::scope(|scope| {
        for t in 0..threads {
            let (done, stop) = (&done, &stop);
            scope.spawn(move || {
                let mut answer = [0u8; 16];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut stream) = connect_from(source(t), to) else {
                        continue;
                    };
                    if stream.write_all(b"GET /ping 0123\n\n").is_ok()
                        && stream.read_exact(&mut answer).is_ok()
                    {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
    });
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Bytes per second written over `streams` established connections for `duration`.
pub fn throughput(streams: &mut [TcpStream], duration: Duration) -> f64 {
    let written = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    thread::scope(|scope| {
        for stream in streams.iter_mut() {
            let (written, stop) = (&written, &stop);
            scope.spawn(move || {
                let chunk = vec![7u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    if stream.write_all(&chunk).is_err() {
                        break;
                    }
                    written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            });
        }
        thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
    });
    written.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}
