//! The VM: qemu with software emulation booting the kernel and initramfs, the host's root shared
//! read-only and a results directory writable; the console echoed, logged and watched for the
//! guest's progress, and the run stopped if it does not boot or outlasts its time.
use std::{
    collections::VecDeque,
    fs,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    follow_console,
    initramfs::{self, Plan},
    report::{self, Outcome},
    utf8,
};

/// Booting to PID 1 and mounting the shares takes well under a minute under emulation.
const BOOT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How many console lines a failure report quotes.
const CONSOLE_TAIL: usize = 30;

/// What the console shows of the guest's progress.
#[derive(Default)]
struct Console {
    booted: bool,
    running: Option<String>,
    tail: VecDeque<String>,
}

/// Boots `plan`'s kernel with its initramfs, echoing and logging the console to
/// `work/console.log`, and stops it if it does not boot or the tests outlast `timeout`; returns
/// what ran.
pub(super) fn boot_and_test(plan: &Plan, work: &Path, timeout: Duration) -> Result<Outcome> {
    fs::create_dir_all(work)?;
    let results = work.join("results");
    let _ = fs::remove_dir_all(&results);
    fs::create_dir_all(&results)?;
    let initramfs = initramfs::write(plan, work)?;
    let console_log = work.join("console.log");

    let mut qemu = Command::new("qemu-system-x86_64");
    // One host thread for both virtual CPUs, though that is slower: with a thread each, a CPU
    // has been seen running a breakpoint the kernel had already patched away (enabling a
    // tracepoint rewrites kernel code while the other CPU runs it), an "Oops: int3" panic.
    qemu.args(["-accel", "tcg,thread=single", "-smp", "2", "-m", "3G"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&plan.image.vmlinuz)
        .arg("-initrd")
        .arg(&initramfs)
        // mitigations=off: the emulated CPU claims the speculation bugs, and their workarounds
        // (page-table isolation on every system call) only slow the emulation down.
        // threadirqs: under emulation everything runs some 30 times slower, drainer's tracepoint
        // program too, and a softirq run on interrupt exit then often lands inside it; the
        // kernel skips that nested run (a recursion miss), the count is no longer exact, and
        // the tracking tests fail. Softirqs handed to ksoftirqd cannot nest there.
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet mitigations=off threadirqs",
        ])
        .args([
            "-virtfs",
            // multidevs=remap: / spans several host filesystems, whose inode numbers would
            // collide in the guest.
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=results,security_model=none",
            // qemu's option syntax escapes a comma by doubling it.
            utf8(&results)?.replace(',', ",,")
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    eprintln!(
        "xtask: booting {} ({}) under qemu; console in {}",
        plan.image.version,
        plan.image.package_version,
        console_log.display()
    );
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;

    let console = Arc::new(Mutex::new(Console::default()));
    let reader = {
        let console = Arc::clone(&console);
        follow_console(&mut child, &console_log, move |line| {
            eprintln!("{line}");
            let mut console = console.lock().unwrap();
            if let Some((_, marker)) = line.split_once("vm-test: ") {
                if marker.starts_with("booted") {
                    console.booted = true;
                } else if let Some(name) = marker.strip_prefix("running ") {
                    console.running = Some(name.to_owned());
                }
            }
            if console.tail.len() == CONSOLE_TAIL {
                console.tail.pop_front();
            }
            console.tail.push_back(line.to_owned());
        })?
    };

    let started = Instant::now();
    let mut stopped = None;
    let exit = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let console = console.lock().unwrap();
        if !console.booted && started.elapsed() > BOOT_TIMEOUT {
            stopped = Some(format!(
                "the VM did not boot within {} s",
                BOOT_TIMEOUT.as_secs()
            ));
        } else if started.elapsed() > timeout {
            stopped = Some(format!(
                "the tests did not finish within {} min (timed out in {})",
                timeout.as_secs() / 60,
                console.running.as_deref().unwrap_or("no test binary")
            ));
        }
        drop(console);
        if stopped.is_some() {
            child.kill().context("stopping qemu")?;
            break child.wait()?;
        }
        thread::sleep(Duration::from_secs(1));
    };
    let _ = reader.join();

    let test_results = report::read_results(&results, plan.tests);
    let console = console.lock().unwrap();
    let problem = stopped.or_else(|| {
        (!results.join("done").exists()).then(|| {
            format!(
                "the VM stopped before every test binary had run (a setup failure, kernel panic \
                 or crash; qemu exited with {exit})"
            )
        })
    });
    Ok(match problem {
        None => Outcome::Ran(test_results),
        Some(problem) => Outcome::Broken {
            problem: format!(
                "{problem}; the console's last lines:\n{}",
                console
                    .tail
                    .iter()
                    .map(|line| format!("      | {line}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            results: test_results,
        },
    })
}
