//! `drainer run`: guard the ports, start the server as a child, and hold its stop signal back
//! until its connections have drained.
//!
//! Everything after start-up happens in one tokio-uring event loop, woken only by signals, the
//! kernel's count-change events, the child's exit and the drain's own deadlines: no polling.
use std::{ffi::OsString, time::Duration};

use anyhow::{Context as _, Result};
use nix::sys::signal::Signal;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{Instant, sleep_until},
};
use tracing::{error, info};

use crate::{
    capabilities::{
        self, CAP_BPF, CAP_KILL, CAP_NET_ADMIN, CAP_PERFMON, CAP_SETGID, CAP_SETPCAP, CAP_SETUID,
    },
    child::{Child, ExitStatus},
    drain::{Drain, Trigger},
    guard::{Action, Guard},
    loop_io::{drain_ring, flush_logs, watch},
    netns::Netns,
    privileges::{ChildPrivileges, Identity},
    startup,
};

pub struct RunOptions {
    pub ports: Vec<u16>,
    pub drain_timeout: Duration,
    pub kill_after: Duration,
    /// Run the server as this user (and group) rather than drainer's own.
    pub user: Option<String>,
    pub group: Option<String>,
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
    let identity = options
        .user
        .as_deref()
        .map(|user| Identity::resolve(user, options.group.as_deref()))
        .transpose()?;
    let mut needed = vec![CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SETPCAP];
    if identity.is_some() {
        needed.extend([CAP_SETUID, CAP_SETGID, CAP_KILL]);
    }
    capabilities::require(&needed)?;
    let privileges = ChildPrivileges::new(identity)?;
    let netns = Netns::current()?;
    let attached = startup::attach(&options.ports, &netns)?;
    let _claims = attached.claims;
    let drain = Drain::new(options.drain_timeout, Some(options.kill_after));
    let guard = Guard::new(attached.programs, attached.diag, drain, options.kill_after);
    tokio_uring::start(supervise(guard, options, privileges))
}

async fn supervise(
    mut guard: Guard,
    options: RunOptions,
    privileges: ChildPrivileges,
) -> Result<i32> {
    // Listen before the child exists, so no signal sent from then on is lost.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut forwarded = forward_signals()?;
    let mut events =
        watch(guard.programs_mut().take_events()?).context("watching the event ring buffer")?;
    let mut ebpf_logs =
        watch(guard.programs_mut().take_logger()?).context("watching the eBPF logs")?;

    let child = watch(Child::spawn(&options.command, &privileges)?)
        .context("watching the command's pidfd")?;
    // Signalling the server (which may run as another user) is all that is left to do.
    capabilities::keep_only(&[CAP_KILL])?;
    info!(
        pid = child.get_ref().pid().as_raw(),
        "started {}",
        command_line(&options.command)
    );
    guard
        .systemd()
        .ready(&format!("serving: {} live", guard.count()?.live));

    loop {
        let wakeup = guard.next_wakeup().map(Instant::from_std);
        let actions = tokio::select! {
            _ = terminate.recv() => guard.stop_signal(Signal::SIGTERM)?,
            _ = interrupt.recv() => guard.stop_signal(Signal::SIGINT)?,
            Some(sig) = forwarded.recv() => vec![Action::Forward(sig)],
            ready = events.readable_mut() => {
                drain_ring(ready?);
                guard.counts_changed()?
            }
            ready = ebpf_logs.readable_mut() => {
                flush_logs(ready?);
                Vec::new()
            }
            ready = child.readable() => {
                let mut ready = ready?;
                if let Some(status) = child.get_ref().try_exit_status()? {
                    return Ok(exited(status));
                }
                ready.clear_ready();
                Vec::new()
            }
            () = sleep_until(wakeup.unwrap_or_else(Instant::now)), if wakeup.is_some() => guard.timer()?,
        };
        for action in actions {
            carry_out(action, &guard, child.get_ref())?;
        }
    }
}

fn carry_out(action: Action, guard: &Guard, child: &Child) -> Result<()> {
    match action {
        Action::Release { trigger, .. } => {
            let signal = match trigger {
                Trigger::Signal(signal) => signal,
                Trigger::Request => Signal::SIGTERM,
            };
            info!("sending {signal} to the server");
            guard
                .systemd()
                .stopping(&format!("released: sent {signal} to the server"));
            child.signal(signal)
        }
        Action::Forward(signal) => {
            info!("forwarding {signal} to the server");
            child.signal(signal)
        }
        Action::Kill => {
            error!("the server did not exit within --kill-after; killing its process group");
            child.kill_group()
        }
    }
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

fn command_line(argv: &[OsString]) -> String {
    argv.iter()
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
