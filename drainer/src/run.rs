//! `drainer run`: guard the ports, start the server as a child, and hold its stop signal back
//! until its connections have drained.
//!
//! Everything after start-up happens in one tokio-uring event loop, woken only by signals, the
//! kernel's count-change events, the child's exit and the drain's own deadlines: no polling.
use std::{ffi::OsString, os::fd::AsRawFd, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use nix::sys::signal::Signal;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{Instant, sleep_until},
};
use tracing::{error, info, warn};

use crate::{
    capabilities::{self, CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON},
    cgroup,
    child::{Child, ExitStatus},
    drain::{Count, Drain, ReleaseReason, Step},
    netns::Netns,
    programs::{PortCount, Programs, Target},
    progress::Progress,
    sock_diag::SockDiag,
};

pub struct RunOptions {
    pub ports: Vec<u16>,
    pub drain_timeout: Duration,
    pub kill_after: Duration,
    pub cgroup: Option<PathBuf>,
    pub command: Vec<OsString>,
}

/// Signals passed through to the server as they arrive.
const FORWARDED: [Signal; 5] = [
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Runs the command under drainer's guard; returns the exit code drainer should exit with.
pub fn run(options: RunOptions) -> Result<i32> {
    capabilities::require(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON])?;
    let netns = Netns::current()?;
    let cgroup = match &options.cgroup {
        Some(path) => path.clone(),
        None => cgroup::cgroup2_root()?,
    };
    let programs = Programs::attach(&Target {
        ports: &options.ports,
        netns: &netns,
        cgroup: &cgroup,
    })?;
    let diag = SockDiag::open()?;
    let count = total(&programs.counts()?);
    info!(
        live = count.live,
        "guarding port(s) {} in {} (tracking through cgroup {}): {} connections already established",
        port_list(&options.ports),
        netns.describe(),
        cgroup.display(),
        count.live
    );
    tokio_uring::start(supervise(programs, diag, options))
}

async fn supervise(mut programs: Programs, diag: SockDiag, options: RunOptions) -> Result<i32> {
    // Listen before the child exists, so no signal sent from then on is lost.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut forwarded = forward_signals()?;
    let mut events = watch(programs.take_events()?).context("watching the event ring buffer")?;
    let mut ebpf_logs =
        watch(programs.take_logger()?).context("watching the eBPF log ring buffer")?;

    let child = watch(Child::spawn(&options.command)?).context("watching the command's pidfd")?;
    info!(
        pid = child.get_ref().pid().as_raw(),
        "started {}",
        command_line(&options.command)
    );

    let mut drain = Drain::new(options.drain_timeout, options.kill_after);
    let mut progress = Progress::new(diag);
    loop {
        let timer = drain.next_timer().map(Instant::from_std);
        let line_due = progress.next_line_at().map(Instant::from_std);
        let mut step = None;
        tokio::select! {
            _ = terminate.recv() => step = Some(drain.on_stop_signal(Signal::SIGTERM, now())),
            _ = interrupt.recv() => step = Some(drain.on_stop_signal(Signal::SIGINT, now())),
            Some(sig) = forwarded.recv() => step = Some(Step::Forward(sig)),
            guard = events.readable_mut() => {
                let mut guard = guard?;
                while guard.get_inner_mut().next().is_some() {}
                guard.clear_ready();
                let count = total(&programs.counts()?);
                step = drain.on_count(count, now());
                progress.count_changed(&programs, count, now());
            }
            guard = ebpf_logs.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            guard = child.readable() => {
                let mut guard = guard?;
                if let Some(status) = child.get_ref().try_exit_status()? {
                    return Ok(exited(status));
                }
                guard.clear_ready();
            }
            () = sleep_until(timer.unwrap_or_else(Instant::now)), if timer.is_some() => {
                step = drain.on_timer(now());
            }
            () = sleep_until(line_due.unwrap_or_else(Instant::now)), if line_due.is_some() => {
                let count = total(&programs.counts()?);
                progress.log_pending(&programs, count, now());
            }
        }
        if let Some(step) = step {
            carry_out(
                step,
                &mut programs,
                &mut drain,
                &mut progress,
                child.get_ref(),
            )?;
        }
    }
}

fn carry_out(
    step: Step,
    programs: &mut Programs,
    drain: &mut Drain,
    progress: &mut Progress,
    child: &Child,
) -> Result<()> {
    match step {
        Step::StartRefusing => {
            programs.start_refusing()?;
            let counts = programs.counts()?;
            let count = total(&counts);
            progress.drain_started(programs, &counts, count, now());
            if let Some(next) = drain.on_count(count, now()) {
                carry_out(next, programs, drain, progress, child)?;
            }
        }
        Step::Release { signal, reason } => {
            let count = total(&programs.counts()?);
            match reason {
                ReleaseReason::Drained => {
                    info!("drained: no live connections; sending {signal} to the server")
                }
                ReleaseReason::SecondSignal => warn!(
                    live = count.live,
                    "second stop signal: releasing now with {} connections live; sending {signal} to the server",
                    count.live
                ),
                ReleaseReason::DeadlinePassed => {
                    progress.report_stragglers(programs, count);
                    warn!("sending {signal} to the server");
                }
            }
            child.signal(signal)?;
        }
        Step::Forward(signal) => {
            info!("forwarding {signal} to the server");
            child.signal(signal)?;
        }
        Step::Kill => {
            error!("the server did not exit within --kill-after; killing its process group");
            child.kill_group()?;
        }
    }
    Ok(())
}

/// Registers a descriptor-owning value with the event loop, for readability.
fn watch<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its descriptor, and AsyncFd owns `inner` until it deregisters it.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(Into::into)
}

/// One channel for all the signals passed through, so the loop waits on a single receiver.
fn forward_signals() -> Result<mpsc::UnboundedReceiver<Signal>> {
    let (sender, receiver) = mpsc::unbounded_channel();
    for sig in FORWARDED {
        let mut stream = signal(SignalKind::from_raw(sig as i32))?;
        let sender = sender.clone();
        tokio::task::spawn_local(async move {
            while stream.recv().await.is_some() && sender.send(sig).is_ok() {}
        });
    }
    Ok(receiver)
}

fn exited(status: ExitStatus) -> i32 {
    info!("the server exited with {status}; detaching");
    status.shell_code()
}

/// The sum over ports.
fn total(counts: &[PortCount]) -> Count {
    Count {
        live: counts.iter().map(|c| c.counters.live).sum(),
        exact: counts.iter().all(|c| c.counters.untracked == 0),
    }
}

fn now() -> std::time::Instant {
    std::time::Instant::now()
}

fn port_list(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn command_line(argv: &[OsString]) -> String {
    argv.iter()
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
