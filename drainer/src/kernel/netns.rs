//! Network namespaces: opening one, and running code inside it.
//!
//! `setns` changes only the calling thread, so work that must happen inside another namespace
//! (creating a socket or a BPF iterator there) runs on a short-lived thread of its own; sockets
//! and iterators keep the namespace they were created in after the thread ends.
use std::{
    fs::{self, File},
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    thread,
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};

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
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_INET, SOCK_DGRAM)");
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn socket_netns_cookie(socket: BorrowedFd<'_>) -> Result<u64> {
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: the buffer and its length describe `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOPROTOOPT) {
            bail!("this kernel has no SO_NETNS_COOKIE socket option (Linux >= 5.14 needed)");
        }
        return Err(err).context("getsockopt(SO_NETNS_COOKIE)");
    }
    Ok(cookie)
}
