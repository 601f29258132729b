//! NETLINK_SOCK_DIAG, the interface `ss` uses: one dump request, its replies parsed in place from
//! one buffer, so a dump of a million sockets holds that buffer, not a million replies.
use std::os::fd::{AsRawFd as _, OwnedFd};

use anyhow::{Context as _, Result, ensure};
use netlink_packet_core::{
    ErrorBuffer, ErrorMessage, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, Parseable as _,
};
use netlink_packet_sock_diag::{SOCK_DIAG_BY_FAMILY, SockDiagMessage};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, recv, send, socket,
};

/// A NETLINK_SOCK_DIAG socket bound to the namespace it was created in.
pub struct SockDiag {
    socket: OwnedFd,
}

impl SockDiag {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        let socket = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )
        .context("socket(AF_NETLINK, NETLINK_SOCK_DIAG)")?;
        Ok(Self { socket })
    }

    /// Sends `request` as a dump and calls `each` with the payload of every reply, read into
    /// `buffer`.
    // Per-layer parsers, not NetlinkMessage::deserialize: it boxes each socket (4x the CPU).
    pub fn dump(
        &self,
        request: SockDiagMessage,
        buffer: &mut [u8],
        mut each: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        self.send(request)?;
        loop {
            let len = recv(self.socket.as_raw_fd(), buffer, MsgFlags::empty())
                .context("reading a sock_diag dump")?;
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
                        return Err(error.to_io()).context("sock_diag dump");
                    }
                    SOCK_DIAG_BY_FAMILY => each(message.payload())?,
                    _ => {}
                }
                let next = (message.length() as usize).next_multiple_of(4);
                messages = &messages[next.min(messages.len())..];
            }
        }
    }

    fn send(&self, request: SockDiagMessage) -> Result<()> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut message = NetlinkMessage::new(header, request.into());
        message.finalize();
        let mut bytes = vec![0u8; message.buffer_len()];
        message.serialize(&mut bytes);
        let sent = send(self.socket.as_raw_fd(), &bytes, MsgFlags::empty())
            .context("sending a sock_diag dump request")?;
        ensure!(
            sent == bytes.len(),
            "a sock_diag dump request went out short"
        );
        Ok(())
    }
}
