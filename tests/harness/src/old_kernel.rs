//! A seccomp trap that makes bpf(2) answer one process as an older kernel would.
//!
//! A seccomp user-notification filter traps the process's bpf(2) calls, and a supervisor thread in
//! the test answers BPF_PROG_LOAD of one program type with EINVAL — what a kernel without that
//! type answers — and lets every other call through to the real kernel. Nothing else on the
//! machine is affected.
use std::{
    io,
    os::{fd::FromRawFd as _, fd::OwnedFd, unix::process::CommandExt as _},
    process::Command,
    thread,
};

use std::os::fd::AsRawFd as _;

pub const BPF_PROG_TYPE_SK_LOOKUP: u32 = 30;
const BPF_PROG_LOAD: u64 = 5;
/// EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE, from linux/audit.h.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Where the child parks its notification descriptor for the test to fetch with pidfd_getfd.
const LISTENER_FD: i32 = 900;

/// Arranges for `command` to trap its bpf(2) calls; call [`answer_as_if_missing`] with its pid
/// once spawned. Until then its first bpf(2) call waits.
pub fn trap_bpf_calls(command: &mut Command) {
    // SAFETY: only raw syscalls (seccomp, dup2, close) between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let filter = bpf_syscall_filter();
            let program = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            let listener = libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &raw const program,
            );
            if listener < 0 || libc::dup2(listener as i32, LISTENER_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            libc::close(listener as i32);
            Ok(())
        });
    }
}

/// Serves the trapped process `pid` until it exits: BPF_PROG_LOAD of `prog_type` fails with
/// EINVAL, everything else proceeds.
pub fn answer_as_if_missing(pid: u32, prog_type: u32) -> thread::JoinHandle<()> {
    let listener = fetch_listener(pid).expect("fetch the seccomp listener from the child");
    thread::spawn(move || {
        loop {
            // Before Linux 6.11 a blocking NOTIF_RECV waits for ever once the child has exited;
            // poll says so with POLLHUP and no POLLIN (Linux >= 5.8).
            let mut ready = libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll reads and writes the one pollfd it is given.
            if unsafe { libc::poll(&raw mut ready, 1, -1) } < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            if ready.revents & libc::POLLIN == 0 {
                return; // the child exited
            }
            // SAFETY: zeroed plain-old-data structs, filled by the kernel.
            let mut notification: libc::seccomp_notif = unsafe { std::mem::zeroed() };
            // SAFETY: the ioctl writes into `notification`.
            if unsafe {
                libc::ioctl(
                    listener.as_raw_fd(),
                    libc::SECCOMP_IOCTL_NOTIF_RECV,
                    &raw mut notification,
                )
            } != 0
            {
                return; // the child exited
            }
            let args = notification.data.args;
            let refuse =
                args[0] == BPF_PROG_LOAD && read_u32(notification.pid, args[1]) == Some(prog_type);
            let mut response = libc::seccomp_notif_resp {
                id: notification.id,
                val: 0,
                error: if refuse { -libc::EINVAL } else { 0 },
                flags: if refuse {
                    0
                } else {
                    libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32
                },
            };
            // SAFETY: the ioctl reads `response`.
            unsafe {
                libc::ioctl(
                    listener.as_raw_fd(),
                    libc::SECCOMP_IOCTL_NOTIF_SEND,
                    &raw mut response,
                )
            };
        }
    })
}

/// arch == x86_64 && nr == bpf → notify the supervisor; anything else → allow.
fn bpf_syscall_filter() -> [libc::sock_filter; 6] {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    [
        op(LD_W_ABS, 0, 0, 4),
        op(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        op(LD_W_ABS, 0, 0, 0),
        op(JEQ_K, 0, 1, libc::SYS_bpf as u32),
        op(RET_K, 0, 0, libc::SECCOMP_RET_USER_NOTIF),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

fn fetch_listener(pid: u32) -> io::Result<OwnedFd> {
    // Raw system calls: nix has neither pidfd_open nor pidfd_getfd, and std's PidFd is unstable.
    // SAFETY: raw syscalls; results checked.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        // The child may not have reached exec yet; the descriptor exists once pre_exec ran,
        // which is before spawn() returned.
        let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), LISTENER_FD, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd as i32))
    }
}

fn read_u32(pid: u32, address: u64) -> Option<u32> {
    let mut value = 0u32;
    let local = libc::iovec {
        iov_base: (&raw mut value).cast(),
        iov_len: 4,
    };
    let remote = libc::iovec {
        iov_base: address as *mut libc::c_void,
        iov_len: 4,
    };
    // SAFETY: the iovecs describe `value` and 4 bytes of the trapped process.
    let read =
        unsafe { libc::process_vm_readv(pid as i32, &raw const local, 1, &raw const remote, 1, 0) };
    (read == 4).then_some(value)
}
