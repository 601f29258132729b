//! Reading a namespace's TCP sockets through NETLINK_SOCK_DIAG (the interface `ss` uses), to name
//! live connections — peer and idle time — when a report needs them.
//!
//! The kernel side keeps counts, not connections; this costs nothing until a report asks — or
//! until the counts can no longer be trusted and the socket table counts instead (see
//! `guard::Guard::counts`).
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use drainer_common::LIVE_TCP_STATES;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HEADER_LEN: usize = 16;
const REQUEST_LEN: usize = NLMSG_HEADER_LEN + 56;
/// family, state, timer, retrans, then `struct inet_diag_sockid` (48 bytes) and five u32s.
const DIAG_MSG_LEN: usize = 4 + 48 + 20;
/// `idiag_timer` of a TIME_WAIT mini-socket, and of nothing else.
const TIME_WAIT_TIMER: u8 = 3;
/// The `tcp_info` attribute, and the bit asking for it in `idiag_ext`.
const INET_DIAG_INFO: u16 = 2;
const WANT_INFO: u8 = 1 << (INET_DIAG_INFO - 1);
/// Offsets in `struct tcp_info` of `tcpi_last_data_sent` and `tcpi_last_data_recv` (ms ago).
const LAST_DATA_SENT: usize = 44;
const LAST_DATA_RECV: usize = 52;

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

/// One server-side TCP socket as sock_diag reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DiagSocket {
    pub local_port: u16,
    pub peer: SocketAddr,
    /// Time since data last went either way; `None` if the kernel did not say.
    pub idle: Option<Duration>,
}

impl fmt::Display for DiagSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}→:{}", self.peer, self.local_port)?;
        match self.idle {
            Some(idle) => write!(f, " idle {:.1}s", idle.as_secs_f64()),
            None => Ok(()),
        }
    }
}

/// A NETLINK_SOCK_DIAG socket bound to the namespace it was created in.
pub struct SockDiag {
    socket: OwnedFd,
}

impl SockDiag {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        // SAFETY: socket(2); the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error())
                .context("socket(AF_NETLINK, NETLINK_SOCK_DIAG)");
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(Self {
            socket: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Every live TCP socket whose local port is one of `ports`, by socket cookie.
    pub fn sockets(&self, ports: &[u16]) -> Result<HashMap<u64, DiagSocket>> {
        let mut found = HashMap::new();
        self.each_socket(ports, |cookie, socket| {
            found.insert(cookie, socket);
        })?;
        Ok(found)
    }

    /// The `limit` live sockets on `ports` idle the longest, most idle first; memory stays bounded
    /// by `limit`, not by the number of sockets.
    pub fn most_idle(&self, ports: &[u16], limit: usize) -> Result<Vec<DiagSocket>> {
        let mut kept = BinaryHeap::with_capacity(limit + 1);
        self.each_socket(ports, |cookie, socket| {
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

    fn each_socket(&self, ports: &[u16], mut each: impl FnMut(u64, DiagSocket)) -> Result<()> {
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            self.send_dump_request(family)?;
            self.read_dump(|cookie, socket| {
                if ports.contains(&socket.local_port) {
                    each(cookie, socket);
                }
            })?;
        }
        Ok(())
    }

    fn send_dump_request(&self, family: u8) -> Result<()> {
        let mut request = [0u8; REQUEST_LEN];
        request[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
        request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        request[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        let body = &mut request[NLMSG_HEADER_LEN..];
        body[0] = family;
        body[1] = libc::IPPROTO_TCP as u8;
        body[2] = WANT_INFO;
        body[4..8].copy_from_slice(&LIVE_STATES.to_ne_bytes());
        // SAFETY: the buffer is valid for its length.
        let sent = unsafe {
            libc::send(
                self.socket.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
            )
        };
        if sent != request.len() as isize {
            return Err(io::Error::last_os_error()).context("sending a sock_diag dump request");
        }
        Ok(())
    }

    fn read_dump(&self, mut each: impl FnMut(u64, DiagSocket)) -> Result<()> {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: the buffer is valid for its length.
            let len = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if len < 0 {
                return Err(io::Error::last_os_error()).context("reading a sock_diag dump");
            }
            let mut messages = &buffer[..len as usize];
            while messages.len() >= NLMSG_HEADER_LEN {
                let message_len = u32::from_ne_bytes(messages[0..4].try_into()?) as usize;
                let kind = u16::from_ne_bytes(messages[4..6].try_into()?);
                if message_len < NLMSG_HEADER_LEN || message_len > messages.len() {
                    bail!("malformed sock_diag reply");
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let errno = i32::from_ne_bytes(messages[16..20].try_into()?);
                        return Err(io::Error::from_raw_os_error(-errno)).context("sock_diag dump");
                    }
                    SOCK_DIAG_BY_FAMILY => {
                        if let Some((cookie, socket)) =
                            parse_diag_msg(&messages[NLMSG_HEADER_LEN..message_len])
                        {
                            each(cookie, socket);
                        }
                    }
                    _ => {}
                }
                messages = &messages[message_len.next_multiple_of(4).min(messages.len())..];
            }
        }
    }
}

/// Parses a `struct inet_diag_msg`; `None` for a TIME_WAIT mini-socket, which the kernel reports
/// under its sub-state (FIN_WAIT2 included) but which has already reached TCP_CLOSE.
fn parse_diag_msg(msg: &[u8]) -> Option<(u64, DiagSocket)> {
    if msg.len() < DIAG_MSG_LEN || msg[2] == TIME_WAIT_TIMER {
        return None;
    }
    let family = i32::from(msg[0]);
    let id = &msg[4..52];
    let local_port = u16::from_be_bytes([id[0], id[1]]);
    let peer_port = u16::from_be_bytes([id[2], id[3]]);
    let dst = &id[20..36];
    let peer_ip = match family {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3])),
        libc::AF_INET6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(dst).ok()?)),
        _ => return None,
    };
    let cookie_low = u32::from_ne_bytes(id[40..44].try_into().ok()?);
    let cookie_high = u32::from_ne_bytes(id[44..48].try_into().ok()?);
    let cookie = u64::from(cookie_low) | (u64::from(cookie_high) << 32);
    Some((
        cookie,
        DiagSocket {
            local_port,
            peer: SocketAddr::new(peer_ip, peer_port),
            idle: idle(&msg[DIAG_MSG_LEN..]),
        },
    ))
}

/// The idle time in the `tcp_info` attribute among `attributes` (netlink `rtattr`s).
fn idle(mut attributes: &[u8]) -> Option<Duration> {
    while attributes.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attributes[0], attributes[1]]));
        let kind = u16::from_ne_bytes([attributes[2], attributes[3]]);
        if len < 4 || len > attributes.len() {
            return None;
        }
        if kind == INET_DIAG_INFO {
            let info = &attributes[4..len];
            let ms_ago =
                |at: usize| Some(u32::from_ne_bytes(info.get(at..at + 4)?.try_into().ok()?));
            let ms = ms_ago(LAST_DATA_SENT)?.min(ms_ago(LAST_DATA_RECV)?);
            return Some(Duration::from_millis(u64::from(ms)));
        }
        attributes = &attributes[len.next_multiple_of(4).min(attributes.len())..];
    }
    None
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
        let sockets = SockDiag::open().unwrap().sockets(&[port]).unwrap();
        let peers: Vec<_> = sockets.values().map(|s| s.peer).collect();
        assert_eq!(peers, vec![client.local_addr().unwrap()]);
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
        let listed = SockDiag::open().unwrap().most_idle(&[port], 1).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].peer, quiet.local_addr().unwrap());
        assert!(listed[0].idle.unwrap() >= Duration::from_millis(250));
    }
}
