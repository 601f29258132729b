//! `drainer run`: guard the ports, start the server as a child, and hold its stop signal back
//! until its connections have drained; with `--restart-signal`, restart it on that signal without
//! refusing anyone ([`restart`]).
//!
//! After start-up the event loop adds its sources to the engine's: the serving generation's
//! pidfd (it exited), a restart's other generation's, and the signals passed through to it (or
//! restarting it).
mod child;
mod privileges;
mod restart;

use std::{ffi::OsString, time::Duration};

use anyhow::{Context as _, Result};
use nix::sys::signal::Signal;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{error, info, warn};

pub use self::restart::RestartOptions;
use self::{
    child::{Child, ExitStatus},
    privileges::{ChildPrivileges, Identity},
    restart::{Generation, ReplacedDrain, Restart},
};
use crate::{
    engine::{
        Action, Engine, EngineInput,
        policy::{Drain, DrainSettings, Phase, Trigger},
    },
    event_loop::{EventLoop, Input},
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
    /// Restart the server on a signal, into a new generation on a port of its own.
    pub restart: Option<RestartOptions>,
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
    if options.restart.is_some() {
        needed.extend(Kernel::LISTENER_PRIVILEGES);
    }
    capabilities::require(&needed)?;
    let privileges = ChildPrivileges::new(identity)?;
    let netns = Netns::current()?;
    let kernel = Kernel::load(&Target {
        ports: &options.ports,
        netns: &netns,
        privileges: &ATTACH_PRIVILEGES,
        restarts: options.restart.is_some(),
    })?;
    let drain = Drain::new(options.drain, Some(options.kill_after));
    let engine = Engine::new(kernel, drain, options.kill_after);
    tokio_uring::start(supervise(engine, options, privileges))
}

/// What `run` adds to the engine's inputs.
enum ChildInput {
    /// The serving generation exited.
    Exited(ExitStatus),
    /// A restart's other generation exited.
    OtherExited(ExitStatus),
    Forward(Signal),
}

/// The generations of the server and what drainer does with them.
struct Supervisor {
    options: RunOptions,
    privileges: ChildPrivileges,
    serving: Generation,
    restart: Option<Restart>,
    /// A restart signal came while a restart was under way: its restart follows.
    restart_pending: bool,
    /// The server was sent its release.
    released: bool,
}

async fn supervise(
    mut engine: Engine,
    options: RunOptions,
    privileges: ChildPrivileges,
) -> Result<i32> {
    // Listen before the child exists, so no signal sent from then on is lost.
    let mut event_loop = EventLoop::new(engine.kernel_mut())?;
    let restart_signal = options.restart.map(|restart| restart.signal);
    let mut forwarded = forward_signals(restart_signal)?;

    let serving = match options.restart {
        Some(_) => Generation::start(
            1,
            &options.command,
            &options.ports,
            &options.ports,
            &privileges,
        )?,
        None => Generation {
            number: 1,
            child: event_loop_watch(Child::spawn(&options.command, &privileges)?)?,
            ports: options.ports.clone(),
        },
    };
    // Signalling the server (which may run as another user) is all that is left to do, and
    // attaching the programs when a drain starts. A restart also copies the generations'
    // listeners, and starts a generation as the first one was started.
    let mut held = ATTACH_PRIVILEGES.to_vec();
    if options.restart.is_some() {
        held.extend(Kernel::LISTENER_PRIVILEGES);
        held.extend(privileges.needed());
        capabilities::keep_for_later_children(&[CAP_KILL], &held)?;
    } else {
        capabilities::keep(&[CAP_KILL], &held)?;
    }
    let started = match options.restart {
        Some(_) => restart::with_ports(&options.command, &options.ports, &options.ports),
        None => options.command.clone(),
    };
    info!(pid = serving.pid(), "started {}", command_line(&started));
    engine
        .systemd()
        .ready(&format!("serving: {} live", engine.count()?.live));

    let mut supervisor = Supervisor {
        options,
        privileges,
        serving,
        restart: None,
        restart_pending: false,
        released: false,
    };
    let supervised = supervisor
        .follow(&mut event_loop, &mut engine, &mut forwarded)
        .await;
    if let Err(err) = &supervised {
        release_on_failure(
            &engine,
            supervisor.serving.child(),
            supervisor.released,
            err,
        );
    }
    supervised
}

fn event_loop_watch(child: Child) -> Result<AsyncFd<Child>> {
    crate::event_loop::watch(child).context("watching the command's pidfd")
}

impl Supervisor {
    /// Runs the loop until the serving generation exits; returns drainer's exit code.
    async fn follow(
        &mut self,
        event_loop: &mut EventLoop,
        engine: &mut Engine,
        forwarded: &mut mpsc::UnboundedReceiver<Signal>,
    ) -> Result<i32> {
        loop {
            let wakeup = [
                engine.next_wakeup(),
                self.restart.as_ref().and_then(Restart::next_wakeup),
            ]
            .into_iter()
            .flatten()
            .min();
            let from_children = child_input(
                &self.serving.child,
                self.restart.as_ref().map(|restart| &restart.other().child),
                forwarded,
            );
            let actions = match event_loop.next(wakeup, from_children).await? {
                Input::Engine(EngineInput::StopSignal(signal)) => {
                    if let Some(restart) = self.restart.take() {
                        self.restart = restart.on_stop(engine.kernel_mut())?;
                    }
                    self.restart_pending = false;
                    engine.on(EngineInput::StopSignal(signal))?
                }
                Input::Engine(EngineInput::CountsChanged) => {
                    let actions = engine.on(EngineInput::CountsChanged)?;
                    if let Some(restart) = &mut self.restart {
                        restart.on_counts(engine.kernel())?;
                    }
                    actions
                }
                Input::Engine(EngineInput::Timer) => {
                    let now = std::time::Instant::now();
                    if let Some(restart) = self.restart.take() {
                        let starting = restart.starting();
                        let replaced_drain = self.replaced_drain();
                        self.restart = if restart.next_wakeup().is_some_and(|at| at <= now) {
                            restart.on_timer(
                                engine.kernel_mut(),
                                &mut self.serving,
                                replaced_drain,
                            )?
                        } else {
                            Some(restart)
                        };
                        self.after_restart_step(starting, engine)?;
                    }
                    engine.on(EngineInput::Timer)?
                }
                Input::Listening => {
                    if let Some(restart) = self.restart.take() {
                        let starting = restart.starting();
                        let replaced_drain = self.replaced_drain();
                        self.restart = restart.on_listening(
                            engine.kernel_mut(),
                            &mut self.serving,
                            replaced_drain,
                        )?;
                        self.after_restart_step(starting, engine)?;
                    }
                    Vec::new()
                }
                Input::Mode(ChildInput::Forward(signal)) => {
                    if Some(signal) == self.options.restart.map(|r| r.signal) {
                        self.restart_asked(engine)?;
                        Vec::new()
                    } else {
                        vec![Action::Forward(signal)]
                    }
                }
                Input::Mode(ChildInput::OtherExited(status)) => {
                    if let Some(restart) = self.restart.take() {
                        let starting = restart.starting();
                        restart.on_exit(engine.kernel_mut(), &self.serving, status)?;
                        self.after_restart_step(starting, engine)?;
                    }
                    Vec::new()
                }
                Input::Mode(ChildInput::Exited(status)) => {
                    // Steering brought new connections to it: they find their listener the
                    // usual way again.
                    engine.kernel_mut().stop_steering()?;
                    if let Some(restart) = &self.restart {
                        warn!(
                            "generation {} of the server exited while generation {} (pid {}) \
                             still ran: it runs on unsupervised",
                            self.serving.number,
                            restart.other().number,
                            restart.other().pid()
                        );
                    }
                    return Ok(exited(status));
                }
            };
            for action in actions {
                self.released |= matches!(action, Action::Release { .. });
                self.carry_out(action, engine)?;
            }
        }
    }

    /// A restart signal: a restart starts now, or once the one under way is done; none once a
    /// stop has begun.
    fn restart_asked(&mut self, engine: &mut Engine) -> Result<()> {
        if engine.phase() != Phase::Serving {
            warn!("restart signal ignored: the server is being stopped");
            return Ok(());
        }
        if let Some(restart) = &self.restart {
            info!(
                "restart signal: generation {} is still being restarted; the next restart \
                 follows once it is done",
                restart.other().number.max(self.serving.number)
            );
            self.restart_pending = true;
            return Ok(());
        }
        self.begin_restart(engine)
    }

    /// After a restart's step: systemd hears that the new generation serves (READY=1 ends the
    /// reload) or that the restart was given up; a restart asked for meanwhile starts once this
    /// one is over.
    fn after_restart_step(&mut self, was_starting: bool, engine: &mut Engine) -> Result<()> {
        match &self.restart {
            Some(Restart::Draining { replaced, .. }) if was_starting => {
                engine.systemd().ready(&format!(
                    "serving: generation {}; generation {} drains",
                    self.serving.number, replaced.number
                ));
            }
            None if was_starting => engine.systemd().ready(&format!(
                "serving: generation {} (restart given up)",
                self.serving.number
            )),
            None => engine
                .systemd()
                .status(&format!("serving: generation {}", self.serving.number)),
            Some(_) => {}
        }
        if self.restart.is_none() && std::mem::take(&mut self.restart_pending) {
            return self.begin_restart(engine);
        }
        Ok(())
    }

    fn replaced_drain(&self) -> ReplacedDrain {
        ReplacedDrain {
            settings: self.options.drain,
            kill_after: self.options.kill_after,
        }
    }

    fn begin_restart(&mut self, engine: &mut Engine) -> Result<()> {
        let Some(options) = self.options.restart else {
            return Ok(());
        };
        match Restart::begin(
            engine.kernel_mut(),
            &self.serving,
            &self.options.command,
            &self.privileges,
            options,
        ) {
            Ok(restart) => {
                engine.systemd().reloading(&format!(
                    "restarting: generation {} starts on port(s) {}",
                    restart.other().number,
                    restart.other().describe_ports()
                ));
                self.restart = Some(restart);
            }
            Err(err) => warn!(
                "restart: could not start generation {}: {err:#}; generation {} serves on",
                self.serving.number + 1,
                self.serving.number
            ),
        }
        Ok(())
    }

    fn carry_out(&mut self, action: Action, engine: &Engine) -> Result<()> {
        let child = self.serving.child();
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

/// The serving generation's exit, the restart's other generation's, or a signal to pass through.
async fn child_input(
    serving: &AsyncFd<Child>,
    other: Option<&AsyncFd<Child>>,
    forwarded: &mut mpsc::UnboundedReceiver<Signal>,
) -> Result<ChildInput> {
    let other_exit = async {
        match other {
            Some(other) => exit_of(other).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        Some(signal) = forwarded.recv() => Ok(ChildInput::Forward(signal)),
        status = exit_of(serving) => Ok(ChildInput::Exited(status?)),
        status = other_exit => Ok(ChildInput::OtherExited(status?)),
    }
}

/// Waits for `child` to exit, and reaps it.
async fn exit_of(child: &AsyncFd<Child>) -> Result<ExitStatus> {
    loop {
        let mut ready = child.readable().await?;
        if let Some(status) = child.get_ref().try_exit_status()? {
            return Ok(status);
        }
        ready.clear_ready();
    }
}

/// One channel for all the signals passed through, and the restart signal, so the loop waits on a
/// single receiver.
fn forward_signals(restart: Option<Signal>) -> Result<mpsc::UnboundedReceiver<Signal>> {
    let (sender, receiver) = mpsc::unbounded_channel();
    let extra = restart.filter(|signal| !FORWARDED.contains(signal));
    for sig in FORWARDED.into_iter().chain(extra) {
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
