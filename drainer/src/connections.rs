//! The live connections as a report shows them: port, peer and age, oldest first.
use std::{fmt, net::SocketAddr, time::Duration};

use anyhow::Result;
use nix::time::{ClockId, clock_gettime};

use crate::{programs::Programs, sock_diag::SockDiag};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveConnection {
    pub port: u16,
    /// `None` if the socket vanished between reading the map and asking sock_diag.
    pub peer: Option<SocketAddr>,
    /// `None` for connections established before drainer started: their true age is unknown.
    pub age: Option<Duration>,
}

impl fmt::Display for LiveConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peer {
            Some(peer) => write!(f, "{peer}")?,
            None => write!(f, "?")?,
        }
        write!(f, "→:{} ", self.port)?;
        match self.age {
            Some(age) => write!(f, "for {:.1}s", age.as_secs_f64()),
            None => write!(f, "since before drainer started"),
        }
    }
}

/// Up to `limit` live connections, oldest first.
pub fn oldest(programs: &Programs, diag: &SockDiag, limit: usize) -> Result<Vec<LiveConnection>> {
    let tracked = programs.oldest_connections(limit)?;
    if tracked.is_empty() {
        return Ok(Vec::new());
    }
    let cookies = tracked.iter().map(|(cookie, _)| *cookie).collect();
    let peers = diag.sockets_among(programs.ports(), &cookies)?;
    let now = boot_time_ns()?;
    Ok(tracked
        .into_iter()
        .map(|(cookie, connection)| LiveConnection {
            port: programs.port_of(&connection).unwrap_or(0),
            peer: peers.get(&cookie).map(|socket| socket.peer),
            age: (connection.established_ns != 0)
                .then(|| Duration::from_nanos(now.saturating_sub(connection.established_ns))),
        })
        .collect())
}

/// CLOCK_BOOTTIME in nanoseconds, the clock `bpf_ktime_get_boot_ns` reads.
fn boot_time_ns() -> Result<u64> {
    let now = clock_gettime(ClockId::CLOCK_BOOTTIME)?;
    Ok(now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64)
}

/// `a, b, c` for a log line.
pub fn list(connections: &[LiveConnection]) -> String {
    connections
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
