//! The machine: root, Debian packages, running drainer with privileges.
use std::{
    env,
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd::run, no_new_services::NoNewServices};

/// Where downloads and set-ups are kept between runs: `$XDG_CACHE_HOME/drainer`.
pub fn cache_dir() -> Result<PathBuf> {
    let base = match env::var_os("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => home::home_dir().context("HOME is not set")?.join(".cache"),
    };
    Ok(base.join("drainer"))
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Fails unless root, telling how to run `./x <command>` for `what`, which loads eBPF programs
/// and creates network namespaces.
pub fn require_root(what: &str, command: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "{what} load eBPF programs and create network namespaces: run `sudo ./x {command}` \
             (or as root)"
        );
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    which::which(program).is_ok()
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

/// Installs each Debian package that is not installed, for packages whose programs a PATH lookup
/// cannot tell apart (busybox-static and busybox both install `busybox`).
pub fn ensure_debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| {
            Command::new("dpkg-query")
                .args(["--show", "--showformat=${db:Status-Status}", package])
                .output()
                .map_or(true, |o| o.stdout != b"installed")
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    install_debian_packages(&missing)
}

/// Installs `packages` with apt-get, enabling and starting none of the services they bring: the
/// tests start their own nginx and HAProxy in namespaces of their own, and the machine goes on
/// serving what it served before.
pub fn install_debian_packages(packages: &[&str]) -> Result<()> {
    if !on_path("apt-get") {
        bail!(
            "missing {}; install them with your package manager",
            packages.join(", ")
        );
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    let _quiet = NoNewServices::hold()?;
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
