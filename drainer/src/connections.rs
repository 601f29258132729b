//! The live connections as a report names them: port, peer and idle time, most idle first.
use std::{fmt, net::SocketAddr, time::Duration};

use anyhow::Result;

use crate::{programs::Programs, sock_diag::SockDiag};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveConnection {
    pub port: u16,
    pub peer: SocketAddr,
    /// Time since data last went either way; `None` if the kernel did not say.
    pub idle: Option<Duration>,
}

impl fmt::Display for LiveConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}→:{}", self.peer, self.port)?;
        match self.idle {
            Some(idle) => write!(f, " idle {:.1}s", idle.as_secs_f64()),
            None => Ok(()),
        }
    }
}

/// Up to `limit` live connections to the guarded ports, most idle first.
pub fn most_idle(
    programs: &Programs,
    diag: &SockDiag,
    limit: usize,
) -> Result<Vec<LiveConnection>> {
    Ok(diag
        .most_idle(programs.ports(), limit)?
        .into_iter()
        .map(|socket| LiveConnection {
            port: socket.local_port,
            peer: socket.peer,
            idle: socket.idle,
        })
        .collect())
}

/// `a, b, c` for a log line.
pub fn list(connections: &[LiveConnection]) -> String {
    connections
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
