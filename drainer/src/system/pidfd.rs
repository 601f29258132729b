//! A process held by a pidfd rather than by its number: a signal sent through it reaches that
//! process or nobody, never a later one that was given the same pid.
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use nix::{errno::Errno, sys::signal::Signal};

pub struct Process {
    pid: i32,
    fd: OwnedFd,
}

/// Refuses the pids that are not one process other than init: signalled, 0 and below reach a
/// process group or every process.
pub fn check_pid(pid: i32) -> Result<i32, String> {
    match pid {
        2.. => Ok(pid),
        1 => Err("pid 1 is init: drainer never signals it; give the server's pid".to_owned()),
        _ => Err(format!(
            "a pid must be greater than 1 ({pid} would signal a process group or every process)"
        )),
    }
}

/// pidfd_open(2): a descriptor for the process `pid` names now, readable once it has exited.
pub fn open(pid: i32) -> Result<OwnedFd, Errno> {
    // libc: nix (0.30) has no pidfd_open, and std's PidFd is unstable (linux_pidfd).
    // SAFETY: pidfd_open(2) with no flags; the result is checked.
    let fd = Errno::result(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: a fresh descriptor (close-on-exec) nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

impl Process {
    /// The process `pid` names now; `None` if there is none.
    pub fn open(pid: i32) -> io::Result<Option<Self>> {
        match open(pid) {
            Ok(fd) => Ok(Some(Self { pid, fd })),
            Err(Errno::ESRCH) => Ok(None),
            Err(Errno::EINVAL) => Err(io::Error::other(format!(
                "{pid} is a thread, not a process: give its process id (Tgid in /proc/{pid}/status)"
            ))),
            Err(err) => Err(io::Error::other(format!(
                "pidfd_open({pid}): {err} (drainer needs Linux 5.3 or later)"
            ))),
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// pidfd_getfd(2): a copy of the process's descriptor `fd`, close-on-exec, sharing its open
    /// file (for a socket: the socket itself). Needs the right to ptrace the process
    /// (PTRACE_MODE_ATTACH_REALCREDS: CAP_SYS_PTRACE for a process of another user, or one holding
    /// capabilities the caller lacks).
    pub fn copy_fd(&self, fd: RawFd) -> io::Result<OwnedFd> {
        // SAFETY: pidfd_getfd(2) on a descriptor we own, no flags; the result is checked.
        let copy = Errno::result(unsafe {
            libc::syscall(libc::SYS_pidfd_getfd, self.fd.as_raw_fd(), fd, 0)
        })
        .map_err(|err| {
            io::Error::other(format!(
                "copying descriptor {fd} of process {} (pidfd_getfd): {err}",
                self.pid
            ))
        })?;
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(copy as RawFd) })
    }

    /// Sends `signal`; false if the process has exited (and been reaped) since it was opened.
    pub fn signal(&self, signal: Signal) -> io::Result<bool> {
        self.send(signal as libc::c_int)
    }

    /// Whether the process is still there (not yet reaped).
    pub fn alive(&self) -> io::Result<bool> {
        self.send(0)
    }

    fn send(&self, signal: libc::c_int) -> io::Result<bool> {
        // SAFETY: pidfd_send_signal(2) on a descriptor we own, no siginfo, no flags.
        let sent = Errno::result(unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        });
        match sent {
            Ok(_) => Ok(true),
            Err(Errno::ESRCH) => Ok(false),
            Err(err) => Err(io::Error::other(format!(
                "signalling process {}: {err}",
                self.pid
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn only_pids_above_1_name_one_process() {
        assert_eq!(check_pid(2), Ok(2));
        for pid in [1, 0, -1, -42, i32::MIN] {
            assert!(check_pid(pid).is_err(), "{pid} accepted");
        }
    }

    #[test]
    fn a_reaped_process_is_gone_not_an_error() {
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let process = Process::open(child.id() as i32).unwrap().expect("running");
        assert!(process.alive().unwrap());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!process.signal(Signal::SIGTERM).unwrap());
    }
}
