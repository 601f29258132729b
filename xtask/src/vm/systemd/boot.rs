//! The VM: qemu with software emulation booting the image's own kernel and initramfs, its disk a
//! qcow2 overlay of the cached image (discarded after the run), the run's directory shared at
//! /srv/vm; the console logged, its `vm-deploy:` lines echoed, and the run stopped if the guest
//! hangs.
use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::image::Image;
use crate::{
    cmd::run,
    vm::{follow_console, utf8},
};

/// A guest that has not started its run unit by then hangs: it booted in about 30 s here. Only
/// a hang detector, never reached by a slow boot that progresses.
const BOOT_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// What the console has shown of the run so far.
#[derive(Default)]
struct Progress {
    /// When the run unit said the guest had booted.
    booted: Option<Instant>,
    /// The scenario running, and when it started.
    scenario: Option<(String, Instant)>,
    finished: bool,
}

/// How long the host lets each scenario run before it calls the guest hung.
pub(super) struct Limits {
    /// The time each scenario holds its sessions, by name; unnamed ones get none.
    pub(super) holds: Vec<(String, Duration)>,
    /// A scenario may take its hold plus this many times the guest's boot time: it starts and
    /// stops a few units and containers, each a fraction of a boot under the same emulation.
    pub(super) boots_per_scenario: u32,
}

/// Boots `image` with `share` at /srv/vm, logging the console to `work/console.log`; returns once
/// the guest has powered off, or fails if it hung.
pub(super) fn boot(image: &Image, share: &Path, work: &Path, limits: &Limits) -> Result<()> {
    let overlay = work.join("overlay.qcow2");
    let _ = fs::remove_file(&overlay);
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&image.disk)
        .arg(&overlay))?;
    let console_log = work.join("console.log");

    let mut qemu = Command::new("qemu-system-x86_64");
    // One host thread for both virtual CPUs, as vm-test does: with a thread each, a CPU has been
    // seen running a breakpoint the kernel had already patched away when drainer's tracepoint
    // was enabled.
    qemu.args(["-accel", "tcg,thread=single", "-smp", "2", "-m", "2G"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&image.vmlinuz)
        .arg("-initrd")
        .arg(&image.initrd)
        // mitigations=off and threadirqs: see vm/qemu.rs. panic=-1: a kernel panic powers off
        // (with -no-reboot) instead of waiting for the timeout.
        .args([
            "-append",
            "console=ttyS0 root=/dev/vda rw panic=-1 mitigations=off threadirqs",
        ])
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=qcow2",
            utf8(&overlay)?.replace(',', ",,")
        ))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=vm,security_model=none",
            utf8(share)?.replace(',', ",,")
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    eprintln!(
        "xtask: booting {} under qemu; console in {}",
        image.name,
        console_log.display()
    );
    let started = Instant::now();
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;

    let progress = Arc::new(Mutex::new(Progress::default()));
    let reader = {
        let progress = Arc::clone(&progress);
        follow_console(&mut child, &console_log, move |line| {
            let Some((_, marker)) = line.split_once("vm-deploy: ") else {
                return;
            };
            eprintln!("vm-deploy: {marker}");
            let Ok(mut progress) = progress.lock() else {
                return;
            };
            if marker.starts_with("booted in") {
                progress.booted = Some(Instant::now());
            } else if let Some(name) = marker.strip_prefix("scenario ") {
                progress.scenario = Some((name.to_owned(), Instant::now()));
            } else if marker == "finished" {
                progress.finished = true;
            }
        })?
    };

    let mut hung = None;
    let exit = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Ok(progress) = progress.lock() {
            hung = match progress.booted {
                None => (started.elapsed() > BOOT_TIMEOUT).then(|| {
                    format!(
                        "the guest did not start its run within {} min",
                        BOOT_TIMEOUT.as_secs() / 60
                    )
                }),
                Some(booted) => {
                    // Before the first scenario: installing drainer.
                    let (name, since) = progress
                        .scenario
                        .as_ref()
                        .map_or(("install", booted), |(name, since)| (name.as_str(), *since));
                    let hold = limits
                        .holds
                        .iter()
                        .find(|(scenario, _)| scenario == name)
                        .map_or(Duration::ZERO, |(_, hold)| *hold);
                    let limit = hold + booted.duration_since(started) * limits.boots_per_scenario;
                    (since.elapsed() > limit).then(|| {
                        format!(
                            "scenario {name} ran over {} s (its hold plus {} boot times)",
                            limit.as_secs(),
                            limits.boots_per_scenario
                        )
                    })
                }
            };
        }
        if hung.is_some() {
            child.kill().context("stopping qemu")?;
            break child.wait()?;
        }
        thread::sleep(Duration::from_secs(1));
    };
    let _ = reader.join();
    let _ = fs::remove_file(&overlay);
    let finished = progress.lock().is_ok_and(|progress| progress.finished);
    if let Some(hung) = hung {
        bail!("{hung}; the console is in {}", console_log.display());
    }
    if !finished {
        bail!(
            "the guest powered off before its run finished (qemu exited with {exit}); the \
             console is in {}",
            console_log.display()
        );
    }
    eprintln!(
        "xtask: the guest ran and powered off in {} s",
        started.elapsed().as_secs()
    );
    Ok(())
}
