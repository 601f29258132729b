//! `cargo xtask vm-deploy`: drainer's deployment examples played for real, in a VM that boots
//! Debian bookworm with systemd as PID 1 under qemu (software emulation, no KVM needed): the
//! systemd units of deploy/systemd and, with podman, the Kubernetes pod of deploy/kubernetes.
//! Each scenario holds live WebSocket sessions across a stop and asserts what the documentation
//! promises; the command fails if any assertion does.
//!
//! The stages, one file each:
//!
//! - [`image`]: the guest's disk, built once from Debian's archive with mmdebstrap and cached;
//! - [`scenarios`]: the run's share (the guest's scripts in `guest/`, deploy/kubernetes,
//!   drainer's artifacts, the plan), and the results read back into the verdict;
//! - [`boot`]: qemu booting an overlay of the image, the console logged and watched.
//!
//! Inside, `guest/vm-deploy-run.service` runs `guest/run.py` once the guest has booted; it
//! writes results and the journal to the share and powers the guest off.
mod boot;
mod image;
mod scenarios;

use std::time::Instant;

use anyhow::{Context as _, Result};

use crate::{
    cmd::{self, cargo, run},
    dist::static_binary,
    system,
};

pub struct Options {
    /// Only these scenarios; all when empty.
    pub scenarios: Vec<String>,
}

pub fn vm_deploy(options: &Options) -> Result<()> {
    system::require_root("vm-deploy's image build and guest", "vm-deploy")?;
    system::ensure_packages(&[("qemu-system-x86_64", "qemu-system-x86")])?;
    let chosen = choose(&options.scenarios)?;
    let started = Instant::now();
    let image = image::ensure()?;
    eprintln!(
        "xtask: guest image ready after {} s",
        started.elapsed().as_secs()
    );
    let artifacts = artifacts()?;

    let work = cmd::target_dir()?.join("vm-deploy");
    let share = work.join("share");
    scenarios::prepare(&share, &chosen, &artifacts)?;
    boot::boot(
        &image,
        &share,
        &work,
        &boot::Limits {
            holds: chosen
                .iter()
                .map(|scenario| (scenario.name.to_owned(), scenario.hold))
                .collect(),
            boots_per_scenario: 10,
        },
    )?;
    let verdict = scenarios::report(&share, &chosen);
    eprintln!(
        "xtask: vm-deploy took {} s in all",
        started.elapsed().as_secs()
    );
    verdict
}

fn choose(names: &[String]) -> Result<Vec<&'static scenarios::Scenario>> {
    if names.is_empty() {
        return Ok(scenarios::SCENARIOS.iter().collect());
    }
    names
        .iter()
        .map(|name| {
            scenarios::SCENARIOS
                .iter()
                .find(|scenario| scenario.name == name)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "no scenario {name}: choose among {}",
                        scenarios::SCENARIOS
                            .iter()
                            .map(|scenario| scenario.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
        })
        .collect()
}

/// drainer as a user gets it: `./x dist`'s Debian package, which the guest installs with apt,
/// and its OCI archive, which podman loads.
fn artifacts() -> Result<scenarios::Artifacts> {
    let dist = crate::dist::dist()?;
    let name = |path: &std::path::Path| -> Result<String> {
        Ok(path
            .file_name()
            .and_then(|name| name.to_str())
            .with_context(|| format!("{} has no UTF-8 file name", path.display()))?
            .to_owned())
    };
    let xtask = guest_xtask()?;
    Ok(scenarios::Artifacts {
        deb: name(&dist.deb)?,
        oci: name(&dist.image_archive)?,
        xtask: name(&xtask)?,
        files: vec![dist.deb, dist.image_archive, xtask],
    })
}

/// `cargo xtask` itself, for the packages scenario to run its package step in the guest: static
/// (musl), so it runs whatever C library the host's build would have needed.
fn guest_xtask() -> Result<std::path::PathBuf> {
    static_binary::ensure_rust_target()?;
    run(cargo().args([
        "build",
        "--release",
        "--package",
        "xtask",
        "--target",
        static_binary::TARGET,
    ]))?;
    Ok(cmd::target_dir()?
        .join(static_binary::TARGET)
        .join("release/xtask"))
}
