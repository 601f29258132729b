//! One drainer per port and network namespace.
//!
//! Two drainers guarding one port would each release the server on its own count and refuse on
//! its own signal; the second is refused at start instead. The claim is an abstract unix socket
//! named after the port, created inside the guarded namespace: abstract names are scoped by
//! network namespace, need no file system, and vanish with the process that holds them, so a
//! killed drainer leaves no stale claim behind.
use std::os::{
    linux::net::SocketAddrExt as _,
    unix::net::{SocketAddr, UnixListener, UnixStream},
};

use anyhow::{Context as _, Result, bail};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::netns::Netns;

/// The claims, held for drainer's lifetime.
pub struct PortClaims {
    _listeners: Vec<UnixListener>,
}

fn name(port: u16) -> String {
    format!("drainer/port/{port}")
}

/// Claims every port in `netns`, or says which drainer holds one already.
pub fn claim(ports: &[u16], netns: &Netns) -> Result<PortClaims> {
    let listeners = netns.run_inside(|| {
        ports
            .iter()
            .map(|&port| {
                let address = SocketAddr::from_abstract_name(name(port))?;
                match UnixListener::bind_addr(&address) {
                    Ok(listener) => Ok(listener),
                    Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
                        let holder = match UnixStream::connect_addr(&address)
                            .ok()
                            .and_then(|stream| getsockopt(&stream, PeerCredentials).ok())
                        {
                            Some(credentials) => format!(" (pid {})", credentials.pid()),
                            None => String::new(),
                        };
                        bail!(
                            "port {port} in {} is already guarded by another drainer{holder}: \
                             stop that one first, or guard another port",
                            netns.describe()
                        )
                    }
                    Err(err) => {
                        Err(err).with_context(|| format!("claiming port {port} for this drainer"))
                    }
                }
            })
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(PortClaims {
        _listeners: listeners,
    })
}
