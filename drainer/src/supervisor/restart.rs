//! Restarts of the server (`drainer run --restart-signal`): on that signal a new generation of
//! the command starts on a port of its own; once it listens, new connections for the public port
//! go to it, while the generation it replaces keeps its own connections — established, in its
//! accept queue, or completing a handshake it began — and drains them exactly as a stop would,
//! then receives its stop signal. Nobody connected is cut, and nobody connecting is refused.
//!
//! One restart runs at a time: from the signal until the replaced generation has exited. A
//! restart signal meanwhile is remembered, and that restart starts as soon as this one is done.
//! A next generation that exits, or does not listen within the ready timeout, is stopped, and the
//! serving generation goes on as if nothing had happened.
use std::{
    ffi::OsString,
    net::{Ipv6Addr, SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use super::{
    child::{Child, ExitStatus},
    privileges::ChildPrivileges,
};
use crate::{
    engine::{
        policy::{Activity, Drain, DrainSettings, Phase, ReleaseReason, Step},
        report_stragglers,
    },
    event_loop::watch,
    kernel::{Idleness, Kernel, Listener, Whose},
    system::capabilities,
};

/// Where a generation's port stands in the command's arguments: `{port}` for the first guarded
/// port's, `{port:P}` for guarded port P's.
const PORT_PLACEHOLDER: &str = "{port}";
/// The environment variable holding a generation's port for the first guarded port, for servers
/// that read it from there; `DRAINER_PORT_P` holds guarded port P's.
pub const PORT_VARIABLE: &str = "DRAINER_PORT";
/// A listener announced by the kernel may not be in the socket table yet (`listen()` announces
/// itself just before it joins the listening table): look again after this, doubling, a few
/// times.
const LISTENER_RETRY: Duration = Duration::from_millis(1);
const LISTENER_RETRIES: u32 = 10;
/// The replaced generation's count is logged as it falls, at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
pub struct RestartOptions {
    /// The signal that restarts the server.
    pub signal: Signal,
    /// How long a new generation may take to listen on its port.
    pub ready_timeout: Duration,
}

/// How a restart drains the generation it replaces: as a stop drains the server.
#[derive(Clone, Copy, Debug)]
pub struct ReplacedDrain {
    pub settings: DrainSettings,
    pub kill_after: Duration,
}

/// One run of the server's command.
pub struct Generation {
    pub number: u32,
    pub child: AsyncFd<Child>,
    /// The port it was given for each guarded port, in the same order.
    pub ports: Vec<u16>,
}

impl Generation {
    /// Starts generation `number` of `command`, given `ports` for the guarded ports `public`.
    pub fn start(
        number: u32,
        command: &[OsString],
        public: &[u16],
        ports: &[u16],
        privileges: &ChildPrivileges,
    ) -> Result<Self> {
        let _raised = capabilities::raise(&privileges.needed())?;
        let child = Child::spawn_with(
            &with_ports(command, public, ports),
            privileges,
            &port_variables(public, ports),
        )?;
        Ok(Self {
            number,
            child: watch(child).context("watching the command's pidfd")?,
            ports: ports.to_vec(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.get_ref().pid().as_raw()
    }

    pub fn child(&self) -> &Child {
        self.child.get_ref()
    }

    /// Its ports, as the log shows them.
    pub fn describe_ports(&self) -> String {
        describe(&self.ports)
    }
}

fn describe(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `command` with every `{port}` in its arguments replaced by the port given for the first of
/// the guarded ports `public`, and every `{port:P}` by the port given for P.
pub fn with_ports(command: &[OsString], public: &[u16], ports: &[u16]) -> Vec<OsString> {
    command
        .iter()
        .map(|arg| match arg.to_str() {
            Some(text) if text.contains('{') => {
                let mut text = text.replace(PORT_PLACEHOLDER, &ports[0].to_string());
                for (public, port) in public.iter().zip(ports) {
                    text = text.replace(&format!("{{port:{public}}}"), &port.to_string());
                }
                text.into()
            }
            _ => arg.clone(),
        })
        .collect()
}

/// `DRAINER_PORT` for the first guarded port, `DRAINER_PORT_P` for each guarded port P.
fn port_variables(public: &[u16], ports: &[u16]) -> Vec<(String, u16)> {
    std::iter::once((PORT_VARIABLE.to_owned(), ports[0]))
        .chain(
            public
                .iter()
                .zip(ports)
                .map(|(public, port)| (format!("{PORT_VARIABLE}_{public}"), *port)),
        )
        .collect()
}

/// A restart under way.
pub enum Restart {
    /// The next generation runs and does not listen on its port yet.
    Starting {
        next: Generation,
        /// The serving generation's listeners, marked as the replaced generation's.
        replaced_listeners: Vec<Listener>,
        started: Instant,
        deadline: Instant,
        /// When to look for its listener again after an announcement found none, and how many
        /// looks that will make.
        retry: Option<(Instant, u32)>,
    },
    /// New connections go to the next generation, which now serves; the replaced one drains.
    Draining {
        replaced: Generation,
        /// Boxed: larger than the other state by far.
        drain: Box<Drain>,
        /// The last count logged, and when.
        logged: Option<(i64, Instant)>,
        /// Its live connections against the idle threshold, when the drain releases on
        /// idleness.
        idleness: Option<Idleness>,
    },
}

impl Restart {
    /// Starts the next generation, given for each guarded port that port itself when nothing
    /// listens there, a free port otherwise, and watches for it to listen.
    pub fn begin(
        kernel: &mut Kernel,
        serving: &Generation,
        command: &[OsString],
        privileges: &ChildPrivileges,
        options: RestartOptions,
    ) -> Result<Self> {
        let public = kernel.ports().to_vec();
        let taken = kernel.listening(&public)?;
        let mut free = free_ports(taken.iter().filter(|&&t| t).count())
            .context("choosing ports for the next generation")?
            .into_iter();
        let ports: Vec<u16> = public
            .iter()
            .zip(&taken)
            .map(|(&port, &taken)| {
                if taken {
                    free.next().unwrap_or(port)
                } else {
                    port
                }
            })
            .collect();
        let replaced_listeners: Vec<Listener> = kernel
            .listeners(serving.pid(), &serving.ports)
            .context("finding the serving generation's listeners")?
            .into_iter()
            .flatten()
            .collect();
        if let Err(err) = kernel.begin_restart(&replaced_listeners, &ports) {
            kernel.abandon_restart(&replaced_listeners)?;
            return Err(err);
        }
        let next = match Generation::start(serving.number + 1, command, &public, &ports, privileges)
        {
            Ok(next) => next,
            Err(err) => {
                kernel.abandon_restart(&replaced_listeners)?;
                return Err(err);
            }
        };
        info!(
            pid = next.pid(),
            "restart: generation {} started on port(s) {}; generation {} serves until it listens",
            next.number,
            next.describe_ports(),
            serving.number
        );
        let now = Instant::now();
        Ok(Self::Starting {
            next,
            replaced_listeners,
            started: now,
            deadline: now + options.ready_timeout,
            retry: None,
        })
    }

    /// The child the restart watches besides the serving one: the next generation, or the
    /// replaced one.
    pub fn other(&self) -> &Generation {
        match self {
            Self::Starting { next, .. } => next,
            Self::Draining { replaced, .. } => replaced,
        }
    }

    /// The next generation does not listen yet.
    pub fn starting(&self) -> bool {
        matches!(self, Self::Starting { .. })
    }

    /// When [`Restart::on_timer`] is next due.
    pub fn next_wakeup(&self) -> Option<Instant> {
        match self {
            Self::Starting {
                deadline, retry, ..
            } => Some(retry.map_or(*deadline, |(at, _)| at.min(*deadline))),
            Self::Draining {
                drain, idleness, ..
            } => [
                drain.next_timer(),
                idleness.as_ref().and_then(|i| i.next_check),
            ]
            .into_iter()
            .flatten()
            .min(),
        }
    }

    /// The kernel announced a listener on the watched port: once the next generation's is found,
    /// the switch.
    pub fn on_listening(
        self,
        kernel: &mut Kernel,
        serving: &mut Generation,
        replaced_drain: ReplacedDrain,
    ) -> Result<Option<Self>> {
        self.look_for_listener(kernel, serving, replaced_drain, 0)
    }

    fn look_for_listener(
        self,
        kernel: &mut Kernel,
        serving: &mut Generation,
        replaced_drain: ReplacedDrain,
        looks: u32,
    ) -> Result<Option<Self>> {
        let Self::Starting {
            next,
            replaced_listeners,
            started,
            deadline,
            ..
        } = self
        else {
            return Ok(Some(self));
        };
        let listeners = kernel.listeners(next.pid(), &next.ports)?;
        let missing: Vec<u16> = next
            .ports
            .iter()
            .zip(&listeners)
            .filter(|(_, held)| held.is_empty())
            .map(|(&port, _)| port)
            .collect();
        if !missing.is_empty() {
            let retry = (looks < LISTENER_RETRIES)
                .then(|| (Instant::now() + LISTENER_RETRY * 2u32.pow(looks), looks + 1));
            if retry.is_none() {
                for (&port, taken) in missing.iter().zip(kernel.listening(&missing)?) {
                    if taken {
                        warn!(
                            "restart: a socket listens on port {port}, but generation {} holds \
                             none: waiting for one of its own",
                            next.number
                        );
                    }
                }
            }
            return Ok(Some(Self::Starting {
                next,
                replaced_listeners,
                started,
                deadline,
                retry,
            }));
        }
        info!(
            "restart: generation {} listening on port(s) {} after {:.3} s",
            next.number,
            next.describe_ports(),
            started.elapsed().as_secs_f64()
        );
        match switch(kernel, serving, next, &listeners, replaced_drain) {
            Ok(draining) => Ok(Some(draining)),
            Err((next, err)) => {
                let status = give_up(kernel, &next, &replaced_listeners)?;
                warn!(
                    "restart: could not hand new connections to generation {} ({err:#}): \
                     stopped ({status}); generation {} serves on",
                    next.number, serving.number
                );
                Ok(None)
            }
        }
    }

    /// The count changed: the replaced generation may be drained.
    pub fn on_counts(&mut self, kernel: &Kernel) -> Result<()> {
        let Self::Draining {
            replaced,
            drain,
            logged,
            idleness,
        } = self
        else {
            return Ok(());
        };
        let count = kernel.counts()?.replaced();
        let now = Instant::now();
        let activity = match drain.phase() {
            Phase::Draining {
                refusing: true,
                settings:
                    DrainSettings {
                        release_when_idle: Some(idle_for),
                        ..
                    },
                ..
            } => {
                let seen = kernel.idleness(idle_for, now, Whose::Replaced)?;
                let activity = if seen.active.is_empty() {
                    Activity::AllIdle
                } else {
                    Activity::Busy
                };
                *idleness = Some(seen);
                activity
            }
            _ => {
                *idleness = None;
                Activity::Unknown
            }
        };
        if logged.is_none_or(|(live, at)| live != count.live && now >= at + PROGRESS_EVERY) {
            info!(
                live = count.live,
                "restart: generation {}: {} live", replaced.number, count.live
            );
            *logged = Some((count.live, now));
        }
        if let Some(step) = drain.on_count(count, activity, now) {
            carry_out(kernel, replaced, idleness.as_ref(), step)?;
        }
        Ok(())
    }

    /// A timer is due: a second look for a listener, the ready timeout, or the replaced
    /// generation's deadline or kill timer. `None`: the restart was given up.
    pub fn on_timer(
        mut self,
        kernel: &mut Kernel,
        serving: &mut Generation,
        replaced_drain: ReplacedDrain,
    ) -> Result<Option<Self>> {
        let now = Instant::now();
        match &mut self {
            Self::Starting {
                next,
                replaced_listeners,
                deadline,
                retry,
                ..
            } => {
                if let Some((at, looks)) = *retry
                    && now >= at
                {
                    *retry = None;
                    return self.look_for_listener(kernel, serving, replaced_drain, looks);
                }
                if now >= *deadline {
                    let status = give_up(kernel, next, replaced_listeners)?;
                    warn!(
                        "restart: generation {} did not listen on port(s) {} within the ready \
                         timeout: stopped ({status}); generation {} serves on",
                        next.number,
                        next.describe_ports(),
                        serving.number
                    );
                    return Ok(None);
                }
            }
            Self::Draining { idleness, .. }
                if idleness
                    .as_ref()
                    .and_then(|i| i.next_check)
                    .is_some_and(|at| at <= now) =>
            {
                // A connection may have fallen silent: nothing announces that.
                self.on_counts(kernel)?;
            }
            Self::Draining {
                replaced,
                drain,
                idleness,
                ..
            } => {
                for step in drain.on_timer(now) {
                    carry_out(kernel, replaced, idleness.as_ref(), step)?;
                }
            }
        }
        Ok(Some(self))
    }

    /// The restart's other child exited: the restart is over.
    pub fn on_exit(
        self,
        kernel: &mut Kernel,
        serving: &Generation,
        status: ExitStatus,
    ) -> Result<()> {
        match self {
            Self::Starting {
                next,
                replaced_listeners,
                ..
            } => {
                let moved: Vec<u16> = kernel
                    .ports()
                    .iter()
                    .zip(&next.ports)
                    .filter(|(public, port)| public != port)
                    .map(|(&public, _)| public)
                    .collect();
                let hint = if moved.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (a server that binds port(s) {} itself rather than the port it was \
                         given finds them taken)",
                        describe(&moved)
                    )
                };
                warn!(
                    "restart: generation {} exited with {status} before it listened on port(s) \
                     {}{hint}; generation {} serves on",
                    next.number,
                    next.describe_ports(),
                    serving.number
                );
                kernel.abandon_restart(&replaced_listeners)
            }
            Self::Draining {
                replaced, drain, ..
            } => {
                if matches!(drain.phase(), Phase::Released { .. }) {
                    info!(
                        "restart: generation {} exited with {status}; restart done, generation {} \
                         serves",
                        replaced.number, serving.number
                    );
                } else {
                    warn!(
                        "restart: generation {} exited with {status} before its connections \
                         drained; generation {} serves",
                        replaced.number, serving.number
                    );
                }
                kernel.end_restart()
            }
        }
    }

    /// A stop signal reached drainer: a next generation that does not serve yet is stopped.
    /// `None`: nothing of the restart is left.
    pub fn on_stop(self, kernel: &mut Kernel) -> Result<Option<Self>> {
        match self {
            Self::Starting {
                next,
                replaced_listeners,
                ..
            } => {
                let status = give_up(kernel, &next, &replaced_listeners)?;
                warn!(
                    "restart: stopping before generation {} listened: stopped it ({status})",
                    next.number
                );
                Ok(None)
            }
            draining @ Self::Draining { .. } => Ok(Some(draining)),
        }
    }
}

/// The switch: the serving generation becomes the replaced one (its connections have been
/// counted apart since the restart began), and new connections go to `next`. On failure `next`
/// is handed back.
fn switch(
    kernel: &mut Kernel,
    serving: &mut Generation,
    next: Generation,
    listeners: &[Vec<Listener>],
    replaced_drain: ReplacedDrain,
) -> std::result::Result<Restart, (Generation, anyhow::Error)> {
    let public = kernel.ports().to_vec();
    let targets: Vec<(u16, Option<&[Listener]>)> = public
        .iter()
        .zip(&next.ports)
        .zip(listeners)
        .map(|((&public, &port), held)| (public, (port != public).then_some(held.as_slice())))
        .collect();
    if let Err(err) = kernel.switch_generations(&targets) {
        return Err((next, err));
    }
    for ((public, steer_to), port) in targets.iter().zip(&next.ports) {
        match steer_to {
            Some(listeners) => {
                describe_listeners(next.number, *port, listeners);
                info!(
                    "restart: new connections for port {public} go to generation {} on port \
                     {port}",
                    next.number
                );
            }
            None => info!(
                "restart: generation {} listens on port {public} itself: nothing steers there",
                next.number
            ),
        }
    }
    let replaced = std::mem::replace(serving, next);
    let mut drain = Box::new(Drain::new(
        DrainSettings {
            accept_for: Duration::ZERO,
            ..replaced_drain.settings
        },
        Some(replaced_drain.kill_after),
    ));
    // For the replaced generation the switch is what refusal is for a stop: no new connection
    // reaches it any more.
    let _ = drain.on_stop_signal(Signal::SIGTERM, Instant::now());
    let mut draining = Restart::Draining {
        replaced,
        drain,
        logged: None,
        idleness: None,
    };
    if let Err(err) = draining.on_counts(kernel) {
        warn!("restart: reading the replaced generation's count: {err:#}");
    }
    Ok(draining)
}

/// Stops a generation that never served: its process group, at once; the serving generation,
/// whose listeners are `replaced_listeners`, is no longer followed.
fn give_up(
    kernel: &mut Kernel,
    generation: &Generation,
    replaced_listeners: &[Listener],
) -> Result<ExitStatus> {
    kernel.abandon_restart(replaced_listeners)?;
    generation.child().kill_and_reap()
}

/// Carries out a step of the replaced generation's drain; `idleness` is what the last look at its
/// connections found, when the drain releases on idleness.
fn carry_out(
    kernel: &Kernel,
    replaced: &Generation,
    idleness: Option<&Idleness>,
    step: Step,
) -> Result<()> {
    match step {
        Step::Release { reason, .. } => {
            let why = match reason {
                ReleaseReason::Drained => "its connections have all closed".to_owned(),
                ReleaseReason::Idle => format!(
                    "the {} connection(s) it has left have all been idle for {:.1}s or more",
                    idleness.map_or(0, |i| i.idle),
                    idleness.map_or(0.0, |i| i.idle_for.as_secs_f64())
                ),
                ReleaseReason::DeadlinePassed => {
                    let count = kernel.counts()?.replaced();
                    report_stragglers(
                        kernel,
                        count,
                        Whose::Replaced,
                        &format!("restart: generation {}'s drain", replaced.number),
                    );
                    "the drain deadline passed".to_owned()
                }
                ReleaseReason::SecondSignal | ReleaseReason::Forced => "asked to".to_owned(),
            };
            info!(
                "restart: generation {} released ({why}): sending SIGTERM",
                replaced.number
            );
            replaced.child().signal(Signal::SIGTERM)
        }
        Step::Kill => {
            warn!(
                "restart: generation {} did not exit within --kill-after; killing its process group",
                replaced.number
            );
            replaced.child().kill_group()
        }
        Step::StartDraining | Step::StartRefusing | Step::Resume | Step::Forward(_) => Ok(()),
    }
}

fn describe_listeners(generation: u32, port: u16, listeners: &[Listener]) {
    let kinds: Vec<&str> = listeners
        .iter()
        .map(|l| match (l.ipv6, l.dual_stack) {
            (false, _) => "IPv4",
            (true, false) => "IPv6",
            (true, true) => "IPv6 and IPv4",
        })
        .collect();
    info!(
        "restart: generation {generation} holds {} listener(s) on port {port}: {}",
        listeners.len(),
        kinds.join(", ")
    );
}

/// `count` distinct ports nothing in this network namespace listens on now, of the kernel's
/// choosing.
fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    // Held until all are chosen, so the kernel cannot give one twice.
    let listeners = (0..count)
        .map(|_| {
            TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)))
                .or_else(|_| TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], 0))))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|listener| Ok(listener.local_addr()?.port()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_placeholders_are_replaced_in_every_argument() {
        let command: Vec<OsString> = [
            "uvicorn",
            "app:app",
            "--port",
            "{port}",
            "--bind=127.0.0.1:{port}",
            "--tls={port:8443}",
            "{port:9999}",
        ]
        .map(OsString::from)
        .to_vec();
        assert_eq!(
            with_ports(&command, &[8000, 8443], &[41234, 41235]),
            [
                "uvicorn",
                "app:app",
                "--port",
                "41234",
                "--bind=127.0.0.1:41234",
                "--tls=41235",
                "{port:9999}",
            ]
            .map(OsString::from)
        );
    }

    #[test]
    fn each_guarded_port_has_a_variable_and_the_first_the_plain_one() {
        assert_eq!(
            port_variables(&[8000, 8443], &[41234, 8443]),
            [
                ("DRAINER_PORT".to_owned(), 41234),
                ("DRAINER_PORT_8000".to_owned(), 41234),
                ("DRAINER_PORT_8443".to_owned(), 8443),
            ]
        );
    }
}
