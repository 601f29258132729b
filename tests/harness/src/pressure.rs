//! Resource pressure: a tight descriptor limit for the process under test, and an unprivileged
//! user (nobody, uid 65534) holding idle connections open against its listeners.
use std::{io, os::unix::process::CommandExt as _, path::Path, process::Command, time::Duration};

use crate::{
    netns::TestNetns,
    process::Process,
    tempdir::{SYSTEM_PYTHON, TempDir},
};

/// The user the flood runs as.
pub const NOBODY: u32 = 65534;

/// Sets both the soft and the hard RLIMIT_NOFILE of `command` to `limit`: a process cannot raise
/// its own hard limit without CAP_SYS_RESOURCE, and raising the soft one to the hard one gains
/// nothing.
pub fn limit_descriptors(command: &mut Command, limit: u64) -> &mut Command {
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        command.pre_exec(move || set_descriptor_limit(limit));
    }
    command
}

fn set_descriptor_limit(limit: u64) -> io::Result<()> {
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: a plain system call on a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `command` run as nobody, with `descriptors` as its RLIMIT_NOFILE: raised while still
/// root, before the ids change. Call after anything else that must run as root before exec
/// (joining a namespace): pre_exec steps run in the order they were added, and
/// `Command::uid` would switch users before any of them.
pub fn as_nobody(command: &mut Command, descriptors: u64) -> &mut Command {
    // SAFETY: setrlimit, setgroups, setgid and setuid are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            set_descriptor_limit(descriptors)?;
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// tests/python/idle_flood.py as nobody in `netns`: `count` idle connections to the Unix socket
/// `unix` and as many to `tcp`, each replaced when the server closes it. Returns once `count` to
/// each have been opened (some may have been answered by then). The script runs from a copy in
/// `dir`, on the system python3: nobody may be unable to reach the clone or the test virtualenv.
pub fn idle_flood(
    netns: &TestNetns,
    dir: &TempDir,
    count: usize,
    unix: &Path,
    tcp: std::net::SocketAddr,
) -> Process {
    let mut command = netns.command(SYSTEM_PYTHON);
    command
        .arg(dir.script_copy("idle_flood.py"))
        .arg(count.to_string())
        .arg(unix)
        .arg(tcp.ip().to_string())
        .arg(tcp.port().to_string());
    as_nobody(&mut command, 4 * count as u64 + 64);
    let flood = Process::spawn("idle_flood", command);
    flood.wait_for(
        &format!("holding {count} unix {count} tcp"),
        Duration::from_secs(60),
    );
    flood
}
