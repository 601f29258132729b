//! The abstract unix stream sockets of a network namespace, with the uid that owns each, read
//! through NETLINK_SOCK_DIAG (as `ss -xe` reads them).
//!
//! The owner is the uid that created the socket, kept by the kernel with it: no process can
//! present another's, and reading it needs no connection to the socket, so a socket whose
//! backlog is full, or one bound but not yet listening, is listed like any other.
use anyhow::{Context as _, Result};
use netlink_packet_core::{NlasIterator, Parseable as _};
use netlink_packet_sock_diag::{
    SockDiagMessage, UDIAG_SHOW_NAME, UNIX_DIAG_NAME,
    unix::{ShowFlags, StateFlags, UnixRequest, UnixResponseHeader},
};

use super::sock_diag::SockDiag;

/// `UDIAG_SHOW_UID` and its attribute (Linux 5.3), which netlink-packet-sock-diag 0.5 lacks.
const UDIAG_SHOW_UID: u32 = 0x40;
const UNIX_DIAG_UID: u16 = 7;
/// The size of `struct unix_diag_msg`, which precedes a reply's attributes.
const UNIX_DIAG_MSG_LEN: usize = 16;

/// One socket bound to an abstract name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbstractSocket {
    /// The name, without the leading NUL that marks it abstract.
    pub name: Vec<u8>,
    pub inode: u64,
    pub owner: u32,
}

/// Every stream socket bound to an abstract name in the calling thread's network namespace, in
/// any state: listening, connected, or bound only.
pub fn abstract_stream_sockets() -> Result<Vec<AbstractSocket>> {
    let request = UnixRequest {
        // Every state: a socket between bind(2) and listen(2) holds its name already.
        state_flags: StateFlags::from_bits_retain(u32::MAX),
        inode: 0,
        show_flags: ShowFlags::from_bits_retain(UDIAG_SHOW_NAME | UDIAG_SHOW_UID),
        cookie: [0xff; 8],
    };
    let mut found = Vec::new();
    SockDiag::open()?
        .dump(
            SockDiagMessage::UnixRequest(request),
            &mut vec![0u8; 64 * 1024],
            |payload| {
                if let Some(socket) = parse_response(payload)? {
                    found.push(socket);
                }
                Ok(())
            },
        )
        .context("listing unix sockets (a kernel built without CONFIG_UNIX_DIAG cannot)")?;
    Ok(found)
}

/// A reply for an abstract stream socket; `None` for any other socket.
fn parse_response(payload: &[u8]) -> Result<Option<AbstractSocket>> {
    let header = UnixResponseHeader::parse(payload).context("malformed unix sock_diag reply")?;
    if i32::from(header.kind) != libc::SOCK_STREAM {
        return Ok(None);
    }
    let (mut name, mut owner) = (None, None);
    for attribute in NlasIterator::new(payload.get(UNIX_DIAG_MSG_LEN..).unwrap_or_default()) {
        let attribute = attribute.context("malformed unix sock_diag attribute")?;
        match attribute.kind() {
            UNIX_DIAG_NAME => name = attribute.value().strip_prefix(&[0]).map(<[u8]>::to_vec),
            UNIX_DIAG_UID => {
                owner = attribute
                    .value()
                    .first_chunk()
                    .map(|bytes| u32::from_ne_bytes(*bytes));
            }
            _ => {}
        }
    }
    let Some(name) = name else {
        return Ok(None);
    };
    let owner = owner.context(
        "the kernel does not say who owns a unix socket (UNIX_DIAG_UID, Linux >= 5.3 needed)",
    )?;
    Ok(Some(AbstractSocket {
        name,
        inode: u64::from(header.inode),
        owner,
    }))
}

#[cfg(test)]
mod tests {
    use std::os::{
        fd::AsFd as _,
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixListener},
    };

    use nix::sys::stat::fstat;

    use super::*;

    /// Reads this process's own listener back, with its inode and owner.
    #[test]
    fn lists_an_abstract_listener_with_its_owner() {
        let name = format!("drainer-test/unix-sockets/{}", std::process::id());
        let listener =
            UnixListener::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let inode = fstat(listener.as_fd()).unwrap().st_ino;
        let found = abstract_stream_sockets().unwrap();
        let ours: Vec<_> = found.iter().filter(|s| s.name == name.as_bytes()).collect();
        assert_eq!(
            ours,
            [&AbstractSocket {
                name: name.into_bytes(),
                inode,
                owner: nix::unistd::geteuid().as_raw(),
            }]
        );
    }
}
