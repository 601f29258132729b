//! Reading a namespace's TCP sockets through NETLINK_SOCK_DIAG (the interface `ss` uses), to name
//! live connections — peer and idle time — when a report needs them.
//!
//! The kernel side keeps counts, not connections; this costs nothing until a report asks — or
//! until the counts can no longer be trusted and the socket table counts instead (see
//! `kernel::counts`).
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    fmt,
    net::SocketAddr,
    time::Duration,
};

use anyhow::Result;
use drainer_common::LIVE_TCP_STATES;
use netlink_packet_core::{Emitable as _, NlasIterator, Parseable as _};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, INET_DIAG_INFO, IPPROTO_TCP, SockDiagMessage,
    inet::{
        ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags, Timer, nlas::TcpInfo,
    },
};

use super::sock_diag::SockDiag;

/// [`LIVE_TCP_STATES`] as an `idiag_states` bit mask.
const LIVE_STATES: u32 = {
    let mut mask = 0;
    let mut i = 0;
    while i < LIVE_TCP_STATES.len() {
        mask |= 1 << LIVE_TCP_STATES[i];
        i += 1;
    }
    mask
};

/// `TCP_LISTEN` as an `idiag_states` bit mask.
const LISTENING: u32 = 1 << 10;

/// One server-side TCP socket as sock_diag reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableSocket {
    pub local_port: u16,
    /// The socket's owner (an accepted connection's is its listener's).
    pub uid: u32,
    pub peer: SocketAddr,
    /// Time since data last went either way; `None` if the kernel did not say.
    pub idle: Option<Duration>,
    /// Bytes wait in its queues: received but not yet read by the server, or written but not
    /// yet acknowledged (sent or not).
    pub queued: bool,
}

impl fmt::Display for TableSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}→:{}", self.peer, self.local_port)?;
        match self.idle {
            Some(idle) => write!(f, " idle {:.1}s", idle.as_secs_f64()),
            None => Ok(()),
        }
    }
}

/// The TCP sockets of the namespace it was opened in.
pub struct SocketTable {
    diag: SockDiag,
}

impl SocketTable {
    /// Opens the table of the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        Ok(Self {
            diag: SockDiag::open()?,
        })
    }

    /// The owner of each listener on `ports`, as (port, uid) pairs.
    pub fn listener_owners(&self, ports: &[u16]) -> Result<Vec<(u16, u32)>> {
        let mut owners = Vec::new();
        let mut buffer = vec![0u8; 16 * 1024];
        for family in [AF_INET, AF_INET6] {
            self.dump(family, LISTENING, &mut buffer, |_, socket| {
                let owner = (socket.local_port, socket.uid);
                if ports.contains(&socket.local_port) && !owners.contains(&owner) {
                    owners.push(owner);
                }
            })?;
        }
        Ok(owners)
    }

    /// The inode of each socket listening on one of `ports`, of either family, with its port.
    pub fn listener_inodes(&self, ports: &[u16]) -> Result<Vec<(u32, u16)>> {
        let mut inodes = Vec::new();
        let mut buffer = vec![0u8; 16 * 1024];
        for family in [AF_INET, AF_INET6] {
            self.diag.dump(
                SockDiagMessage::InetRequest(request(family, LISTENING)),
                &mut buffer,
                |payload| {
                    if let Ok(header) = InetResponseHeader::parse(payload)
                        && ports.contains(&header.socket_id.source_port)
                    {
                        inodes.push((header.inode, header.socket_id.source_port));
                    }
                    Ok(())
                },
            )?;
        }
        Ok(inodes)
    }

    /// Every live TCP socket whose local port is one of `ports`, by socket cookie.
    pub fn sockets(&self, ports: &[u16]) -> Result<HashMap<u64, TableSocket>> {
        let mut found = HashMap::new();
        self.for_each(ports, |cookie, socket| {
            found.insert(cookie, socket);
        })?;
        Ok(found)
    }

    /// The `limit` live sockets on `ports` idle the longest, most idle first; memory stays bounded
    /// by `limit`, not by the number of sockets.
    /// `keep` chooses among them by socket cookie.
    pub fn most_idle(
        &self,
        ports: &[u16],
        limit: usize,
        keep: impl Fn(u64) -> bool,
    ) -> Result<Vec<TableSocket>> {
        let mut kept = BinaryHeap::with_capacity(limit + 1);
        self.for_each(ports, |cookie, socket| {
            if !keep(cookie) {
                return;
            }
            kept.push(Reverse((socket.idle, cookie, socket)));
            if kept.len() > limit {
                kept.pop();
            }
        })?;
        Ok(kept
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse((_, _, socket))| socket)
            .collect())
    }

    /// Calls `each` with every live socket on `ports` and its cookie, one dump, nothing kept.
    pub fn for_each(&self, ports: &[u16], mut each: impl FnMut(u64, TableSocket)) -> Result<()> {
        let mut buffer = vec![0u8; 64 * 1024];
        for family in [AF_INET, AF_INET6] {
            self.dump(family, LIVE_STATES, &mut buffer, |cookie, socket| {
                if ports.contains(&socket.local_port) {
                    each(cookie, socket);
                }
            })?;
        }
        Ok(())
    }

    /// One dump of the sockets of `family` in `states`, each reply parsed.
    fn dump(
        &self,
        family: u8,
        states: u32,
        buffer: &mut [u8],
        mut each: impl FnMut(u64, TableSocket),
    ) -> Result<()> {
        self.diag.dump(
            SockDiagMessage::InetRequest(request(family, states)),
            buffer,
            |payload| {
                if let Some((cookie, socket)) = parse_response(payload) {
                    each(cookie, socket);
                }
                Ok(())
            },
        )
    }
}

/// A dump request for the TCP sockets of `family` in `states`, with their `tcp_info`.
fn request(family: u8, states: u32) -> InetRequest {
    InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::INFO,
        states: StateFlags::from_bits_retain(states),
        socket_id: match family {
            AF_INET => SocketId::new_v4(),
            _ => SocketId::new_v6(),
        },
    }
}

/// Parses a `struct inet_diag_msg` and its attributes; `None` for a TIME_WAIT mini-socket, which
/// the kernel reports under its sub-state (FIN_WAIT2 included) but which has already reached
/// TCP_CLOSE.
fn parse_response(payload: &[u8]) -> Option<(u64, TableSocket)> {
    let header = InetResponseHeader::parse(payload).ok()?;
    if header.timer == Some(Timer::TimeWait) {
        return None;
    }
    let id = &header.socket_id;
    // The kernel writes the cookie as two native-endian u32s, low word first.
    let [a, b, c, d, e, f, g, h] = id.cookie;
    let cookie = u64::from(u32::from_ne_bytes([a, b, c, d]))
        | (u64::from(u32::from_ne_bytes([e, f, g, h])) << 32);
    let info = tcp_info(payload.get(header.buffer_len()..)?);
    Some((
        cookie,
        TableSocket {
            local_port: id.source_port,
            uid: header.uid,
            peer: SocketAddr::new(id.destination_address, id.destination_port),
            idle: info.as_ref().map(idle),
            queued: header.recv_queue > 0 || header.send_queue > 0,
        },
    ))
}

/// The `tcp_info` attribute among a socket's `attributes`; `None` if the kernel sent none (a
/// socket not yet or no longer a full TCP socket) or one shorter than Linux 5.4's.
fn tcp_info(attributes: &[u8]) -> Option<TcpInfo> {
    let info = NlasIterator::new(attributes)
        .map_while(Result::ok)
        .find(|attribute| attribute.kind() == INET_DIAG_INFO)?;
    TcpInfo::parse(info.value()).ok()
}

/// Time since data last went either way.
fn idle(info: &TcpInfo) -> Duration {
    Duration::from_millis(u64::from(info.last_data_sent.min(info.last_data_recv)))
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// Reads real sockets of this process: a listener and one accepted connection.
    #[test]
    fn finds_an_accepted_connection_with_its_peer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let sockets = SocketTable::open().unwrap().sockets(&[port]).unwrap();
        let peers: Vec<_> = sockets.values().map(|s| s.peer).collect();
        assert_eq!(peers, vec![client.local_addr().unwrap()]);
    }

    /// The IPv6 dump, asked for separately, finds the same things.
    #[test]
    fn finds_an_ipv6_connection() {
        let listener = TcpListener::bind("[::1]:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("::1", port)).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let sockets = SocketTable::open().unwrap().sockets(&[port]).unwrap();
        let found: Vec<_> = sockets.values().map(|s| (s.local_port, s.peer)).collect();
        assert_eq!(found, vec![(port, client.local_addr().unwrap())]);
        assert!(sockets.values().all(|s| s.idle.is_some()));
    }

    /// A connection the server closed first ends as a TIME_WAIT mini-socket in sub-state
    /// FIN_WAIT2, which the kernel still reports for the FIN_WAIT2 filter: it is not live.
    #[test]
    fn skips_time_wait_mini_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        let diag = SocketTable::open().unwrap();
        assert_eq!(diag.sockets(&[port]).unwrap().len(), 1);
        drop(server);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !diag.sockets(&[port]).unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the closed socket is still listed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The connection idle longest comes first, with an idle time the kernel measured.
    #[test]
    fn lists_the_most_idle_first() {
        use std::io::Write as _;

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let quiet = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_quiet_server, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut busy = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_busy_server, _) = listener.accept().unwrap();
        busy.write_all(b"x").unwrap();
        let listed = SocketTable::open()
            .unwrap()
            .most_idle(&[port], 1, |_| true)
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].peer, quiet.local_addr().unwrap());
        assert!(listed[0].idle.unwrap() >= Duration::from_millis(250));
    }
}
