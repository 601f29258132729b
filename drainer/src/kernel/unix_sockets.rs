//! The abstract unix stream sockets of a network namespace, with the uid that owns each, read
//! through NETLINK_SOCK_DIAG (as `ss -xe` reads them).
//!
//! The owner is the uid that created the socket, kept by the kernel with it: no process can
//! present another's, and reading it needs no connection to the socket, so a socket whose
//! backlog is full, or one bound but not yet listening, is listed like any other.
use std::os::fd::{AsRawFd as _, OwnedFd};

use anyhow::{Context as _, Result, ensure};
use netlink_packet_core::{
    ErrorBuffer, ErrorMessage, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, NlasIterator, Parseable as _,
};
use netlink_packet_sock_diag::{
    SOCK_DIAG_BY_FAMILY, SockDiagMessage, UDIAG_SHOW_NAME, UNIX_DIAG_NAME,
    unix::{ShowFlags, StateFlags, UnixRequest, UnixResponseHeader},
};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, recv, send, socket,
};

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
    let diag = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .context("socket(AF_NETLINK, NETLINK_SOCK_DIAG)")?;
    send_dump_request(&diag)?;
    let mut found = Vec::new();
    read_dump(&diag, |payload| {
        if let Some(socket) = parse_response(payload)? {
            found.push(socket);
        }
        Ok(())
    })?;
    Ok(found)
}

fn send_dump_request(diag: &OwnedFd) -> Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let request = UnixRequest {
        // Every state: a socket between bind(2) and listen(2) holds its name already.
        state_flags: StateFlags::from_bits_retain(u32::MAX),
        inode: 0,
        show_flags: ShowFlags::from_bits_retain(UDIAG_SHOW_NAME | UDIAG_SHOW_UID),
        cookie: [0xff; 8],
    };
    let mut message = NetlinkMessage::new(header, SockDiagMessage::UnixRequest(request).into());
    message.finalize();
    let mut bytes = vec![0u8; message.buffer_len()];
    message.serialize(&mut bytes);
    let sent = send(diag.as_raw_fd(), &bytes, MsgFlags::empty())
        .context("sending a unix sock_diag dump request")?;
    ensure!(
        sent == bytes.len(),
        "a unix sock_diag dump request went out short"
    );
    Ok(())
}

fn read_dump(diag: &OwnedFd, mut each: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let len = recv(diag.as_raw_fd(), &mut buffer, MsgFlags::empty())
            .context("reading a unix sock_diag dump")?;
        let mut messages = &buffer[..len];
        while !messages.is_empty() {
            let message =
                NetlinkBuffer::new_checked(messages).context("malformed sock_diag reply")?;
            match message.message_type() {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let error = ErrorBuffer::new_checked(&message.payload())
                        .and_then(|error| ErrorMessage::parse(&error))
                        .context("malformed sock_diag error")?;
                    return Err(error.to_io()).context(
                        "listing unix sockets through sock_diag (a kernel built without \
                         CONFIG_UNIX_DIAG cannot)",
                    );
                }
                SOCK_DIAG_BY_FAMILY => each(message.payload())?,
                _ => {}
            }
            let next = (message.length() as usize).next_multiple_of(4);
            messages = &messages[next.min(messages.len())..];
        }
    }
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
