//! The listening sockets one generation of a restarted server holds, as descriptors drainer holds
//! too.
//!
//! A restart marks the replaced generation's listeners and hands new connections to the next
//! generation's, both through the socket itself, so drainer needs a descriptor of each. The
//! socket table names the sockets listening on the generation's port by inode; the generation's
//! processes — its process group, which drainer made it lead — are searched for a descriptor of
//! that inode, and pidfd_getfd copies it. A listener several processes share (a pre-forking
//! server) is copied once. Reading another process's descriptors takes the right to ptrace it,
//! which the caller raises for the search.
use std::{
    collections::{HashMap, HashSet},
    fs,
    os::fd::{AsRawFd as _, OwnedFd, RawFd},
};

use anyhow::{Context as _, Result};
use nix::sys::socket::{
    AddressFamily, SockaddrLike as _, SockaddrStorage, getsockname, getsockopt, sockopt,
};

use super::socket_table::SocketTable;
use crate::system::pidfd::Process;

/// One listening socket of a generation.
pub struct Listener {
    pub fd: OwnedFd,
    /// An IPv6 socket (rather than IPv4).
    pub ipv6: bool,
    /// An IPv6 socket that takes IPv4 connections too (not `IPV6_V6ONLY`).
    pub dual_stack: bool,
}

/// The sockets listening on each of `ports` that the processes of `process_group` hold, in the
/// order of `ports`: one search of the processes for all of them.
pub fn of_process_group(
    table: &SocketTable,
    process_group: i32,
    ports: &[u16],
) -> Result<Vec<Vec<Listener>>> {
    let wanted: HashMap<u64, usize> = table
        .listener_inodes(ports)?
        .into_iter()
        .filter_map(|(inode, port)| {
            let index = ports.iter().position(|&p| p == port)?;
            Some((u64::from(inode), index))
        })
        .collect();
    let mut found: Vec<Vec<Listener>> = ports.iter().map(|_| Vec::new()).collect();
    let mut copied = HashSet::new();
    if wanted.is_empty() {
        return Ok(found);
    }
    for pid in processes_of_group(process_group)? {
        // A process that exits meanwhile takes its descriptors with it: look at the others.
        let Ok(descriptors) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut process = None;
        for entry in descriptors.flatten() {
            let Some(inode) = fs::read_link(entry.path())
                .ok()
                .and_then(|target| socket_inode(&target.to_string_lossy()))
            else {
                continue;
            };
            let Some(&index) = wanted.get(&inode) else {
                continue;
            };
            if copied.contains(&inode) {
                continue;
            }
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<RawFd>().ok())
            else {
                continue;
            };
            if process.is_none() {
                process = Process::open(pid)?;
            }
            let Some(process) = &process else {
                break;
            };
            let copy = process
                .copy_fd(fd)
                .with_context(|| format!("taking hold of the listener on port {}", ports[index]))?;
            found[index].push(describe(copy)?);
            copied.insert(inode);
        }
    }
    Ok(found)
}

fn describe(fd: OwnedFd) -> Result<Listener> {
    let address: SockaddrStorage =
        getsockname(fd.as_raw_fd()).context("getsockname of a listener")?;
    let ipv6 = address.family() == Some(AddressFamily::Inet6);
    let dual_stack =
        ipv6 && !getsockopt(&fd, sockopt::Ipv6V6Only).context("IPV6_V6ONLY of a listener")?;
    Ok(Listener {
        fd,
        ipv6,
        dual_stack,
    })
}

/// The inode of a `/proc/PID/fd` link's target, if it names a socket (`socket:[1234]`).
fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The processes whose process group is `group`, from /proc.
fn processes_of_group(group: i32) -> Result<Vec<i32>> {
    let mut members = Vec::new();
    for entry in fs::read_dir("/proc").context("reading /proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if process_group_in_stat(&stat) == Some(group) {
            members.push(pid);
        }
    }
    Ok(members)
}

/// The process group in a `/proc/PID/stat` line: the third field after the command name, which is
/// in parentheses and may hold spaces and parentheses itself.
fn process_group_in_stat(stat: &str) -> Option<i32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_process_group_after_an_awkward_command_name() {
        let stat = "4242 (a (b) c) S 1 4240 4240 0 -1 4194560 115 0 0 0";
        assert_eq!(process_group_in_stat(stat), Some(4240));
        assert_eq!(process_group_in_stat("garbage"), None);
    }

    #[test]
    fn names_socket_inodes_only() {
        assert_eq!(socket_inode("socket:[31337]"), Some(31337));
        assert_eq!(socket_inode("pipe:[31337]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }
}
