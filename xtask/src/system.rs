//! The machine: root, Debian packages, running drainer with privileges.
use std::{ffi::OsString, os::unix::process::CommandExt as _, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::cmd::run;

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs the Debian package of each (program, package) whose program is missing.
pub fn ensure_packages(needed: &[(&str, &str)]) -> Result<()> {
    let mut missing: Vec<&str> = needed
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    install_debian_packages(&missing)
}

pub fn install_debian_packages(packages: &[&str]) -> Result<()> {
    if !on_path("apt-get") {
        bail!(
            "missing {}; install them with your package manager",
            packages.join(", ")
        );
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Replaces xtask with `binary args`, run as root: directly when already root, through sudo
/// otherwise. Replacing rather than spawning leaves drainer alone in the terminal's process group,
/// so Ctrl-C reaches it (and starts a drain) without killing a parent in between.
pub fn exec_as_root(binary: &Path, args: &[OsString]) -> Result<()> {
    let mut command = if is_root() {
        Command::new(binary)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("--preserve-env=DRAINER_LOG").arg(binary);
        sudo
    };
    command.args(args);
    let err = command.exec();
    Err(err).with_context(|| format!("cannot run {}", binary.display()))
}
