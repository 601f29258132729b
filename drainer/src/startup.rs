//! Attaching to a namespace, shared by `run` and `daemon`.
use anyhow::Result;
use tracing::info;

use crate::{
    claim::{self, PortClaims},
    netns::Netns,
    programs::{Programs, Target},
    sock_diag::SockDiag,
};

pub struct Attached {
    /// Held until drainer exits: no other drainer can guard these ports meanwhile.
    pub claims: PortClaims,
    pub programs: Programs,
    /// Opened inside the guarded namespace, to name peers there.
    pub diag: SockDiag,
}

pub fn attach(ports: &[u16], netns: &Netns) -> Result<Attached> {
    let claims = claim::claim(ports, netns)?;
    let programs = Programs::attach(&Target { ports, netns })?;
    let diag = netns.run_inside(SockDiag::open)?;
    let count = programs.counts()?.total();
    info!(
        live = count.live,
        "guarding port(s) {} in {}: {} connections already established",
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        netns.describe(),
        count.live
    );
    Ok(Attached {
        claims,
        programs,
        diag,
    })
}
