//! One drainer per port and network namespace, with a claim no unprivileged process can forge or
//! block.
//!
//! Two drainers guarding one port would each release the server on its own count and refuse on
//! its own signal; the second is refused at start instead. A claim is an abstract unix stream
//! socket named after the port, bound inside the guarded namespace: abstract names are scoped by
//! network namespace (so drainers in different containers of one pod still see each other), need
//! no file system, and vanish with the process that holds them, so a killed drainer leaves no
//! stale claim behind.
//!
//! Any process in the namespace, of any uid, may bind any abstract name, so a name alone proves
//! nothing. What a process cannot choose is the uid the kernel records as a socket's owner when
//! it creates it. A claim therefore counts only when its owner is root or drainer's own effective
//! uid — the users that can run drainer at all; a socket with a claim's name owned by anyone else
//! is a squatter's, warned about and ignored. The owner is read through sock_diag
//! (`unix_sockets`), not from SO_PEERCRED of a connection: connecting needs the holder to be
//! listening with room in its backlog, which a squatter can fill, as drainer never accepts.
//!
//! A squatter holding the name blocks only the name: drainer then claims the port under
//! `drainer/port/N/<random>`, a name nobody could have taken beforehand. Every drainer, whichever
//! name it got, then lists every socket named `drainer/port/N` or `drainer/port/N/…` and refuses
//! to start if one it does not hold is root's or its own uid's. Binding comes first and the
//! listing second, so of two drainers starting at once the one that lists last sees the other
//! (both may refuse; neither can miss the other). A squatter can add names, never hide a real
//! drainer's.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::ErrorKind,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixListener},
    },
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::{
        socket::{
            AddressFamily, SockFlag, SockType, UnixAddr, connect, getsockopt, socket,
            sockopt::PeerCredentials,
        },
        stat::fstat,
    },
    unistd::geteuid,
};
use tracing::{debug, warn};

use super::{
    netns::Netns,
    unix_sockets::{self, AbstractSocket},
};

/// The claims, held for drainer's lifetime.
pub struct PortClaims {
    _listeners: Vec<UnixListener>,
}

/// The name every drainer tries first for `port`.
fn name(port: u16) -> String {
    format!("drainer/port/{port}")
}

/// Whether `socket` is named as a claim on `port`.
fn claims_port(socket: &AbstractSocket, port: u16) -> bool {
    let name = name(port);
    socket
        .name
        .strip_prefix(name.as_bytes())
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
}

/// One port's claim, as bound.
struct Claim {
    port: u16,
    name: String,
    inode: u64,
    listener: UnixListener,
}

/// Claims every port in `netns`, or says which drainer holds one already.
pub fn claim(ports: &[u16], netns: &Netns) -> Result<PortClaims> {
    let claims = netns.run_inside(|| {
        let claims = ports
            .iter()
            .map(|&port| bind(port))
            .collect::<Result<Vec<_>>>()?;
        let sockets = unix_sockets::abstract_stream_sockets()
            .context("listing the namespace's unix sockets to find other drainers")?;
        for claim in &claims {
            check_others(claim, &sockets, netns)?;
        }
        Ok(claims)
    })?;
    Ok(PortClaims {
        _listeners: claims.into_iter().map(|claim| claim.listener).collect(),
    })
}

/// Binds `port`'s name, or, if something holds it already, a name of its own for `port` that
/// nobody could have bound before.
fn bind(port: u16) -> Result<Claim> {
    let preferred = name(port);
    let mut candidate = preferred.clone();
    // A second collision on 64 random bits is no accident; a third would be a broken generator.
    for _ in 0..3 {
        let address = SocketAddr::from_abstract_name(&candidate)?;
        match UnixListener::bind_addr(&address) {
            Ok(listener) => {
                let inode = fstat(listener.as_fd())
                    .context("fstat on the port claim")?
                    .st_ino;
                debug!("claimed port {port} as @{candidate}");
                return Ok(Claim {
                    port,
                    name: candidate,
                    inode,
                    listener,
                });
            }
            Err(err) if err.kind() == ErrorKind::AddrInUse => {
                candidate = format!("{preferred}/{:016x}", random()?);
            }
            Err(err) => {
                return Err(err).with_context(|| format!("claiming port {port} for this drainer"));
            }
        }
    }
    bail!("claiming port {port} for this drainer: every name tried was taken")
}

/// Refuses if a drainer other than this one claims `claim`'s port; warns about squatters.
fn check_others(claim: &Claim, sockets: &[AbstractSocket], netns: &Netns) -> Result<()> {
    let own = geteuid().as_raw();
    let others = sockets
        .iter()
        .filter(|socket| claims_port(socket, claim.port) && socket.inode != claim.inode);
    let mut squatters: BTreeMap<u32, Vec<&AbstractSocket>> = BTreeMap::new();
    for socket in others {
        if socket.owner == 0 || socket.owner == own {
            bail!(
                "port {} in {} is already guarded by another drainer{}: stop that one first, or \
                 guard another port",
                claim.port,
                netns.describe(),
                holder_pid(&socket.name)
                    .map(|pid| format!(" (pid {pid})"))
                    .unwrap_or_default()
            );
        }
        squatters.entry(socket.owner).or_default().push(socket);
    }
    for (uid, held) in squatters {
        let mut names = format!("@{}", String::from_utf8_lossy(&held[0].name));
        if held.len() > 1 {
            let _ = write!(names, " and {} more", held.len() - 1);
        }
        let pid = holder_pid(&held[0].name)
            .map(|pid| format!("pid {pid}"))
            .unwrap_or_else(|| "pid unknown".into());
        warn!(
            "{names} held by uid {uid} ({pid}), neither root nor drainer's own user: not a \
             drainer, ignored; port {} in {} is claimed as @{}",
            claim.port,
            netns.describe(),
            claim.name
        );
    }
    Ok(())
}

/// The pid that made the listener named `name` listen, as SO_PEERCRED of a connection reports it;
/// `None` if it cannot be reached (not listening, or its backlog full) or lives in a pid
/// namespace drainer cannot see.
fn holder_pid(name: &[u8]) -> Option<i32> {
    // Non-blocking: connecting to a listener with a full backlog would otherwise wait for room.
    let stream = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    connect(stream.as_raw_fd(), &UnixAddr::new_abstract(name).ok()?).ok()?;
    let pid = getsockopt(&stream, PeerCredentials).ok()?.pid();
    (pid > 0).then_some(pid)
}

/// 64 bits from the kernel's random pool.
fn random() -> Result<u64> {
    let mut bytes = [0u8; 8];
    // libc: nix has no getrandom wrapper.
    // SAFETY: getrandom(2) writes at most `bytes.len()` bytes into `bytes`.
    let filled = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if usize::try_from(filled).ok() != Some(bytes.len()) {
        return Err(std::io::Error::last_os_error()).context("getrandom");
    }
    Ok(u64::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_the_ports_name_or_a_name_under_it() {
        let socket = |name: &str| AbstractSocket {
            name: name.as_bytes().to_vec(),
            inode: 1,
            owner: 0,
        };
        assert!(claims_port(&socket("drainer/port/80"), 80));
        assert!(claims_port(&socket("drainer/port/80/0123456789abcdef"), 80));
        assert!(!claims_port(&socket("drainer/port/800"), 80));
        assert!(!claims_port(&socket("drainer/port/8"), 80));
        assert!(!claims_port(&socket("drainer/port/80x"), 80));
        assert!(!claims_port(&socket("other/drainer/port/80"), 80));
    }
}
