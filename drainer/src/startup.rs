//! Attaching to a namespace, shared by `run` and `daemon`.
use std::path::Path;

use anyhow::Result;
use tracing::info;

use crate::{
    cgroup,
    guard::total,
    netns::Netns,
    programs::{Programs, Target},
    sock_diag::SockDiag,
};

pub struct Attached {
    pub programs: Programs,
    /// Opened inside the guarded namespace, to name peers there.
    pub diag: SockDiag,
}

pub fn attach(ports: &[u16], netns: &Netns, cgroup: Option<&Path>) -> Result<Attached> {
    let cgroup = match cgroup {
        Some(path) => path.to_owned(),
        None => cgroup::cgroup2_root()?,
    };
    let programs = Programs::attach(&Target {
        ports,
        netns,
        cgroup: &cgroup,
    })?;
    let diag = netns.run_inside(SockDiag::open)?;
    let count = total(&programs.counts()?);
    info!(
        live = count.live,
        "guarding port(s) {} in {} (tracking through cgroup {}): {} connections already established",
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        netns.describe(),
        cgroup.display(),
        count.live
    );
    Ok(Attached { programs, diag })
}
