//! Who may use the control socket: root, and the uids and gids given with `--allow-uid` and
//! `--allow-gid`, as the kernel vouches for the caller through SO_PEERCRED.
use std::os::fd::{AsRawFd, BorrowedFd};

use anyhow::Result;
use nix::sys::socket::{UnixCredentials, getsockopt, sockopt::PeerCredentials};

#[derive(Clone, Debug, Default)]
pub struct Allowed {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl Allowed {
    pub fn permits(&self, caller: &UnixCredentials) -> bool {
        let (uid, gid) = (caller.uid(), caller.gid());
        uid == 0 || self.uids.contains(&uid) || self.gids.contains(&gid)
    }
}

/// The credentials of the process at the other end of `socket`, as the kernel recorded them when
/// it connected.
pub fn caller(socket: &impl AsRawFd) -> Result<UnixCredentials> {
    // tokio-uring's streams offer only AsRawFd.
    // SAFETY: `socket` owns the descriptor and outlives this call.
    let fd = unsafe { BorrowedFd::borrow_raw(socket.as_raw_fd()) };
    Ok(getsockopt(&fd, PeerCredentials)?)
}
