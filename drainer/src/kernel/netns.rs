//! Network namespaces: opening one, and running code inside it.
//!
//! `setns` changes only the calling thread, so work that must happen inside another namespace
//! (creating a socket or a BPF iterator there) runs on a short-lived thread of its own; sockets
//! and iterators keep the namespace they were created in after the thread ends.
use std::{
    fs::{self, File},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    thread,
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::{
    errno::Errno,
    sched::{CloneFlags, setns},
    sys::socket::{AddressFamily, SockFlag, SockType, getsockopt, socket},
};

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// The namespace of the calling process.
    pub fn current() -> Result<Self> {
        Self::open(Path::new("/proc/self/ns/net"))
    }

    /// Opens `/proc/PID/ns/net`, `/run/netns/NAME` or any other network-namespace file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| {
            format!(
                "cannot open network namespace {}: give /proc/PID/ns/net or /run/netns/NAME",
                path.display()
            )
        })?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// A second handle on the same namespace.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            file: self
                .file
                .try_clone()
                .with_context(|| format!("duplicating the handle on {}", self.path.display()))?,
            path: self.path.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `net:[4026531840]` (the namespace's inode, as `ls -l /proc/PID/ns` shows it) and the path
    /// it was opened by.
    pub fn describe(&self) -> String {
        match self.file.metadata() {
            Ok(meta) => format!("net:[{}] ({})", meta.ino(), self.path.display()),
            Err(_) => self.path.display().to_string(),
        }
    }

    /// Runs `work` on a thread that has joined this namespace; on the calling thread when it is
    /// already there, which needs no CAP_SYS_ADMIN.
    pub fn run_inside<T: Send>(&self, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        if self.is_current_thread_namespace()? {
            return work();
        }
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).with_context(|| {
                        format!("cannot enter network namespace {}", self.path.display())
                    })?;
                    work()
                })
                .join()
                .map_err(|_| anyhow!("a thread working inside {} panicked", self.path.display()))?
        })
    }

    /// Whether this is the namespace drainer itself runs in.
    pub fn is_current(&self) -> Result<bool> {
        self.is_current_thread_namespace()
    }

    fn is_current_thread_namespace(&self) -> Result<bool> {
        let ours =
            fs::metadata("/proc/thread-self/ns/net").context("reading /proc/thread-self/ns/net")?;
        let theirs = self
            .file
            .metadata()
            .with_context(|| format!("reading {}", self.path.display()))?;
        Ok((ours.dev(), ours.ino()) == (theirs.dev(), theirs.ino()))
    }

    /// The namespace's cookie, as `bpf_get_netns_cookie` reports it to programs.
    pub fn cookie(&self) -> Result<u64> {
        self.run_inside(|| {
            let socket = udp_socket()?;
            socket_netns_cookie(socket.as_fd())
        })
        .with_context(|| {
            format!(
                "reading the cookie of network namespace {}",
                self.path.display()
            )
        })
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

fn udp_socket() -> Result<OwnedFd> {
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket(AF_INET, SOCK_DGRAM)")
}

// nix has no SO_NETNS_COOKIE option; its public sockopt_impl! macro defines one.
mod sockopt {
    use nix::{getsockopt_impl, sockopt_impl};

    sockopt_impl!(
        /// The cookie of the socket's network namespace.
        NetnsCookie,
        GetOnly,
        libc::SOL_SOCKET,
        libc::SO_NETNS_COOKIE,
        u64
    );
}

fn socket_netns_cookie(socket: BorrowedFd<'_>) -> Result<u64> {
    match getsockopt(&socket, sockopt::NetnsCookie) {
        Err(Errno::ENOPROTOOPT) => {
            bail!("this kernel has no SO_NETNS_COOKIE socket option (Linux >= 5.14 needed)")
        }
        cookie => cookie.context("getsockopt(SO_NETNS_COOKIE)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cookie is the kernel's, non-zero and the same each time it is read.
    #[test]
    fn reads_the_current_namespace_cookie() {
        let netns = Netns::current().unwrap();
        let cookie = netns.cookie().unwrap();
        assert_ne!(cookie, 0);
        assert_eq!(netns.cookie().unwrap(), cookie);
    }
}
