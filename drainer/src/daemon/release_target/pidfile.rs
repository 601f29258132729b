//! `--release-pidfile`: a number in a file decides whom drainer signals, with CAP_KILL, possibly
//! days after it started. So the file is trusted only as far as who can write it: a regular file
//! (not followed through a symbolic link) owned by root or drainer's own user and writable by
//! nobody else, holding one pid greater than 1; and the process that pid names now must have
//! started before the file was last written, or the pid is stale and reused.
use std::{
    fs::{self, File},
    io::{self, Read as _},
    os::unix::fs::MetadataExt as _,
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::{
    sys::{signal::Signal, time::TimeSpec},
    time::{ClockId, clock_gettime},
};

use super::Delivery;
use crate::system::{
    pidfd::{Process, check_pid},
    trusted_file::{self, Trust},
};

/// More than a pid and a newline: not a pidfile.
const MAX_LEN: u64 = 32;

/// How much later than the pidfile's last write its process may have started and still be the
/// one it names. The two times come from different clocks and resolutions: the start time is in
/// clock ticks (10 ms), a file's mtime lags by up to a kernel tick and is coarser still on some
/// file systems (2 s on FAT). A pid reused this soon after its pidfile was written is not caught;
/// reusing one takes a walk through the whole pid space.
const START_SLACK_NS: i128 = 2_000_000_000;

/// A checked pidfile: the pid it holds and when it was last written (ns since the epoch).
pub struct Pidfile {
    pub pid: i32,
    written: i128,
}

/// What a pidfile must be: its contents choose whom drainer signals.
const TRUST: Trust = Trust {
    what: "the pidfile",
    controls: "whom drainer signals",
    forbidden_mode: 0o022,
    forbidden_access: "writable",
    chmod: "chmod go-w",
    link_hint: "",
};

/// Opens and checks `path`: the errors say what is wrong and how to fix it.
pub fn read(path: &Path) -> Result<Pidfile> {
    let (file, meta) = trusted_file::open(path, &TRUST)?;
    let pid = parse(file, path)?;
    Ok(Pidfile {
        pid,
        written: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    })
}

fn parse(file: File, path: &Path) -> Result<i32> {
    let shown = path.display();
    let mut bytes = Vec::new();
    file.take(MAX_LEN + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading the pidfile {shown}"))?;
    if bytes.len() as u64 > MAX_LEN {
        bail!("the pidfile {shown} holds more than a pid: write only the server's pid to it");
    }
    let text = String::from_utf8_lossy(&bytes);
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| anyhow!("the pidfile {shown} holds {:?}, not a pid", text.trim()))?;
    check_pid(pid).map_err(|problem| anyhow!("the pidfile {shown} holds {pid}: {problem}"))
}

/// Reads `path` now and signals the process it names, through a pidfd opened right after.
pub fn signal(path: &Path, signal: Signal) -> Result<Delivery> {
    let pidfile = read(path)?;
    let pid = pidfile.pid;
    let Some(process) = Process::open(pid)? else {
        return Ok(Delivery::gone());
    };
    // Read after the pidfd was opened: if that process still lives when it is signalled below,
    // it held `pid` all along and this is its start time; if it has gone, the signal goes nowhere.
    let Some(started) = start_time(pid)? else {
        return Ok(Delivery::gone());
    };
    let late = started - pidfile.written;
    if late > START_SLACK_NS {
        bail!(
            "the pidfile {} names process {pid}, which started {:.1}s after the file was last \
             written: the pidfile is stale and its pid now belongs to another process, so it is \
             not signalled (if this is the server and the wall clock was stepped forward since \
             it started, rewrite the pidfile)",
            path.display(),
            late as f64 / 1e9
        );
    }
    Ok(if process.signal(signal)? {
        Delivery::sent()
    } else {
        Delivery::gone()
    })
}

/// When process `pid` started, in ns since the epoch; `None` if it has gone.
///
/// /proc/PID/stat gives it in clock ticks since boot on CLOCK_BOOTTIME (suspend included, and in
/// drainer's time namespace); the boot's place on the wall clock is REALTIME − BOOTTIME now. Both
/// clocks are slewed alike by NTP, so only a step of the wall clock since the server started
/// moves the result (see the stale-pidfile error).
fn start_time(pid: i32) -> Result<Option<i128>> {
    let stat = match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(anyhow!(err).context(format!("reading /proc/{pid}/stat"))),
    };
    // The command name (field 2) may hold spaces and parentheses: count from its last `)`.
    let ticks: i128 = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .and_then(|field| field.parse().ok())
        .with_context(|| format!("/proc/{pid}/stat has no start time (field 22)"))?;
    // libc: nix's sysconf needs a feature the workspace does not enable.
    // SAFETY: sysconf(3) reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) gave no clock tick rate");
    }
    let realtime = nanoseconds(clock_gettime(ClockId::CLOCK_REALTIME)?);
    let boottime = nanoseconds(clock_gettime(ClockId::CLOCK_BOOTTIME)?);
    Ok(Some(
        realtime - boottime + ticks * 1_000_000_000 / i128::from(hz),
    ))
}

fn nanoseconds(time: TimeSpec) -> i128 {
    i128::from(time.tv_sec()) * 1_000_000_000 + i128::from(time.tv_nsec())
}
