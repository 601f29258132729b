//! `drainer run`: guard the ports, start the server as a child, and hold its stop signal back
//! until its connections have drained.
//!
//! After start-up the event loop adds two sources to the engine's: the child's pidfd (it exited)
//! and the signals passed through to it.
mod child;
mod privileges;

use std::{ffi::OsString, time::Duration};

use anyhow::{Context as _, Result};
use nix::sys::signal::Signal;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{error, info};

use self::{
    child::{Child, ExitStatus},
    privileges::{ChildPrivileges, Identity},
};
use crate::{
    engine::{
        Action, Engine,
        policy::{Drain, DrainSettings, Phase, Trigger},
    },
    event_loop::{EventLoop, Input, watch},
    kernel::{Kernel, Netns, Target},
    system::capabilities::{
        self, CAP_BPF, CAP_KILL, CAP_NET_ADMIN, CAP_PERFMON, CAP_SETGID, CAP_SETPCAP, CAP_SETUID,
        Capability,
    },
};

pub struct RunOptions {
    pub ports: Vec<u16>,
    /// How a drain runs (checked by the command line).
    pub drain: DrainSettings,
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

/// What attaching the programs at a drain's start needs.
const ATTACH_PRIVILEGES: [Capability; 3] = [CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON];

/// Runs the command under drainer's guard; returns the exit code drainer should exit with.
pub fn run(options: RunOptions) -> Result<i32> {
    let identity = options
        .user
        .as_deref()
        .map(|user| Identity::resolve(user, options.group.as_deref()))
        .transpose()?;
    let mut needed = [ATTACH_PRIVILEGES.as_slice(), &[CAP_SETPCAP]].concat();
    if identity.is_some() {
        needed.extend([CAP_SETUID, CAP_SETGID, CAP_KILL]);
    }
    capabilities::require(&needed)?;
    let privileges = ChildPrivileges::new(identity)?;
    let netns = Netns::current()?;
    let kernel = Kernel::load(&Target {
        ports: &options.ports,
        netns: &netns,
        privileges: &ATTACH_PRIVILEGES,
    })?;
    let drain = Drain::new(options.drain, Some(options.kill_after));
    let engine = Engine::new(kernel, drain, options.kill_after);
    tokio_uring::start(supervise(engine, options, privileges))
}

/// What `run` adds to the engine's inputs.
enum ChildInput {
    Exited(ExitStatus),
    Forward(Signal),
}

async fn supervise(
    mut engine: Engine,
    options: RunOptions,
    privileges: ChildPrivileges,
) -> Result<i32> {
    // Listen before the child exists, so no signal sent from then on is lost.
    let mut event_loop = EventLoop::new(engine.kernel_mut())?;
    let mut forwarded = forward_signals()?;

    let child = watch(Child::spawn(&options.command, &privileges)?)
        .context("watching the command's pidfd")?;
    // Signalling the server (which may run as another user) is all that is left to do, and
    // attaching the programs when a drain starts.
    capabilities::keep(&[CAP_KILL], &ATTACH_PRIVILEGES)?;
    info!(
        pid = child.get_ref().pid().as_raw(),
        "started {}",
        command_line(&options.command)
    );
    engine
        .systemd()
        .ready(&format!("serving: {} live", engine.count()?.live));

    let mut released = false;
    let supervised = follow(
        &mut event_loop,
        &mut engine,
        &child,
        &mut forwarded,
        &mut released,
    )
    .await;
    if let Err(err) = &supervised {
        release_on_failure(&engine, child.get_ref(), released, err);
    }
    supervised
}

/// Runs the loop until the child exits; returns drainer's exit code. `released` tells whether
/// the server was sent its release.
async fn follow(
    event_loop: &mut EventLoop,
    engine: &mut Engine,
    child: &AsyncFd<Child>,
    forwarded: &mut mpsc::UnboundedReceiver<Signal>,
    released: &mut bool,
) -> Result<i32> {
    loop {
        let from_child = child_input(child, forwarded);
        let actions = match event_loop.next(engine.next_wakeup(), from_child).await? {
            Input::Engine(input) => engine.on(input)?,
            Input::Mode(ChildInput::Forward(signal)) => vec![Action::Forward(signal)],
            Input::Mode(ChildInput::Exited(status)) => return Ok(exited(status)),
        };
        for action in actions {
            *released |= matches!(action, Action::Release { .. });
            carry_out(action, engine, child.get_ref())?;
        }
    }
}

/// The loop cannot go on and drainer is about to exit. A drain under way releases the server
/// now, and says so, rather than leave it waiting for a stop signal that would never come; so
/// does one the policy released when the step that released it failed before signalling.
fn release_on_failure(engine: &Engine, child: &Child, released: bool, err: &anyhow::Error) {
    match engine.phase() {
        Phase::Draining { trigger, .. } | Phase::Released { trigger, .. } if !released => {
            let signal = match trigger {
                Trigger::Signal(signal) => signal,
                Trigger::Request => Signal::SIGTERM,
            };
            error!("drainer cannot go on ({err:#}): releasing the server now with {signal}");
            if let Err(err) = child.signal(signal) {
                error!("cannot signal the server: {err:#}");
            }
        }
        Phase::Serving => error!(
            "drainer cannot go on ({err:#}): no stop was asked for; the server (pid {}) runs on, \
             unguarded",
            child.pid()
        ),
        Phase::Draining { .. } | Phase::Released { .. } => {
            error!("drainer cannot go on ({err:#}): the server was already released");
        }
    }
}

/// The child's exit, or a signal to pass through to it.
async fn child_input(
    child: &AsyncFd<Child>,
    forwarded: &mut mpsc::UnboundedReceiver<Signal>,
) -> Result<ChildInput> {
    loop {
        tokio::select! {
            Some(signal) = forwarded.recv() => return Ok(ChildInput::Forward(signal)),
            ready = child.readable() => {
                let mut ready = ready?;
                if let Some(status) = child.get_ref().try_exit_status()? {
                    return Ok(ChildInput::Exited(status));
                }
                ready.clear_ready();
            }
        }
    }
}

fn carry_out(action: Action, engine: &Engine, child: &Child) -> Result<()> {
    match action {
        Action::Release { trigger, .. } => {
            let signal = match trigger {
                Trigger::Signal(signal) => signal,
                Trigger::Request => Signal::SIGTERM,
            };
            info!("sending {signal} to the server");
            engine
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
