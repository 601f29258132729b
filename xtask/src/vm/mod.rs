//! `cargo xtask vm-test`: the unit and integration tests under each kernel series Debian's archive
//! offers, booted in qemu with software emulation (TCG), so older kernels are tested without
//! installing them or rebooting this machine.
//!
//! The stages, one file each:
//!
//! - [`kernels`]: which kernels Debian's archive offers, and which of them to boot;
//! - [`image`]: a kernel package downloaded and unpacked once, into
//!   `~/.cache/drainer/kernels/<version>/`, its modules indexed;
//! - [`binaries`]: the test executables built here, and the environment they run in;
//! - [`patience`]: how much longer the tests may wait in the guest, measured;
//! - [`initramfs`]: busybox, `init.sh` as /init, the modules it loads and the plan of the run;
//! - [`qemu`]: the boot, the console watched, the run stopped if it hangs;
//! - [`report`]: each binary's result read back, the summary and the verdict.
//!
//! The guest mounts this machine's root filesystem read-only over virtio-9p and runs the test
//! binaries built here, chrooted into it: it sees the same toolchain, Python virtualenv and tools
//! as the host. It writes each binary's output and exit status to a second, writable share, then
//! powers off.
mod binaries;
mod image;
mod initramfs;
mod kernels;
mod patience;
mod qemu;
mod report;
pub mod systemd;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{cmd, python, system};

/// The static busybox the host image and the guest's initramfs use.
const BUSYBOX: &str = "/bin/busybox";

pub struct Options {
    /// A version the archive offers (6.1.0-57) or a series (6.1); every series when absent.
    pub kernel: Option<String>,
    /// Passed to each test binary: only the tests whose names contain it.
    pub filter: Option<String>,
    /// Only the test binaries named; every one when empty.
    pub binaries: Vec<String>,
    /// How long one VM may run its tests.
    pub timeout: Duration,
}

pub fn vm_test(options: &Options) -> Result<()> {
    system::ensure_packages(&[("qemu-system-x86_64", "qemu-system-x86")])?;
    system::ensure_debian_packages(&["busybox-static"])?;
    let kernels = kernels::choose(&kernels::offered()?, options.kernel.as_deref())?;
    let python = python::ensure_venv()?;
    // Under emulation a debug drainer takes about 4 s to attach (parsing the kernel's BTF, twice),
    // longer than some tests give it; the release build, the one deployed, takes about 1 s.
    let drainer = crate::build(true)?;
    let mut tests = binaries::build(options.filter.as_deref())?;
    if !options.binaries.is_empty() {
        if let Some(unknown) = options
            .binaries
            .iter()
            .find(|name| !tests.iter().any(|test| &test.name == *name))
        {
            let known: Vec<&str> = tests.iter().map(|test| test.name.as_str()).collect();
            anyhow::bail!(
                "no test binary is named {unknown}: choose among {}",
                known.join(", ")
            );
        }
        tests.retain(|test| options.binaries.contains(&test.name));
    }
    let images = kernels
        .iter()
        .map(image::fetch)
        .collect::<Result<Vec<_>>>()?;
    let env = binaries::env(&drainer, &python)?;
    let reference = patience::measure(&python)?;

    let logs = cmd::target_dir()?.join("vm-test");
    let mut reports = Vec::new();
    for image in &images {
        let work = logs.join(&image.version);
        let plan = initramfs::Plan {
            image,
            tests: &tests,
            filter: options.filter.as_deref(),
            env: &env,
            reference: &reference,
        };
        let started = Instant::now();
        let outcome = qemu::boot_and_test(&plan, &work, options.timeout)
            .with_context(|| format!("running the tests under {}", image.version))?;
        reports.push(report::Report {
            image,
            outcome,
            wall: started.elapsed(),
            work,
        });
    }
    report::summarize(&reports, &logs)
}

/// `path` as the VM's shell scripts take it.
fn utf8(path: &Path) -> Result<&str> {
    path.to_str().with_context(|| {
        format!(
            "{} is not UTF-8, which the VM's shell scripts need",
            path.display()
        )
    })
}

/// Follows the serial console of `qemu` (spawned with its stdout piped) on a thread: each line,
/// made printable, is appended to `log` and handed to `each`. The thread ends with qemu.
fn follow_console(
    qemu: &mut std::process::Child,
    log: &Path,
    mut each: impl FnMut(&str) + Send + 'static,
) -> Result<std::thread::JoinHandle<()>> {
    use std::io::{BufRead as _, Write as _};
    let stdout = qemu.stdout.take().context("qemu's stdout")?;
    let mut log = std::fs::File::create(log)
        .with_context(|| format!("creating the console log {}", log.display()))?;
    Ok(std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .split(b'\n')
            .map_while(Result::ok)
        {
            let line = printable(&String::from_utf8_lossy(&line));
            let _ = writeln!(log, "{line}");
            each(&line);
        }
    }))
}

/// `line` without the terminal escape sequences the firmware writes to the serial console.
fn printable(line: &str) -> String {
    let mut text = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            // ESC c, or ESC [ parameters and a final letter.
            '\x1b' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\t' => text.push(c),
            c if c.is_control() => {}
            c => text.push(c),
        }
    }
    text
}
