//! `drainer daemon`: guard ports in a network namespace for a server drainer did not start — a
//! Kubernetes sidecar, a systemd companion. A drain starts on SIGTERM/SIGINT or a request (control
//! socket, HTTP); release unblocks every waiter and signals the configured target.
//!
//! A drain started by a signal ends the daemon at release (its own stop was asked for). A drain
//! started by a request leaves it running, refusing, until it is signalled.
//!
//! The event loop adds one source to the engine's: the `requests` channel, through which the
//! `control` socket and the `http` listener ask for a drain or a release.
mod access;
mod connections;
mod control;
mod http;
mod metrics;
mod release_target;
mod requests;
mod signals;
mod token;
mod waiters;
mod wire;

use std::{
    cell::{Cell, RefCell},
    net::SocketAddr,
    path::PathBuf,
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::Signal;
use tokio::{sync::mpsc, time::sleep};
use tracing::{error, info, warn};

pub use self::{access::Allowed, release_target::ReleaseTarget};
use self::{
    connections::Slots,
    http::Http,
    requests::{Command, Commands},
};
use crate::{
    engine::{
        Action, Engine, EngineInput,
        policy::{Drain, DrainSettings, Phase, ReleaseReason, Trigger},
    },
    event_loop::{EventLoop, Input},
    kernel::{Kernel, Netns, Target},
    system::capabilities::{
        self, CAP_BPF, CAP_KILL, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN, Capability,
    },
};

pub struct DaemonOptions {
    pub ports: Vec<u16>,
    pub netns: Option<PathBuf>,
    /// How a drain runs when a request says nothing else (checked by the command line).
    pub drain: DrainSettings,
    pub control_socket: PathBuf,
    pub allowed: Allowed,
    pub http: Option<SocketAddr>,
    pub http_token_file: Option<PathBuf>,
    pub release_target: Option<ReleaseTarget>,
    pub release_signal: Signal,
}

/// How long waiters get to read the release before a signalled daemon exits.
const WAITER_GRACE: Duration = Duration::from_millis(200);

pub fn daemon(options: DaemonOptions) -> Result<i32> {
    let netns = match &options.netns {
        Some(path) => Netns::open(path)?,
        None => Netns::current()?,
    };
    let mut needed = vec![CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON];
    if !netns.is_current()? {
        needed.push(CAP_SYS_ADMIN);
    }
    capabilities::require(&needed)?;
    let token = match &options.http_token_file {
        Some(path) => Some(token::read(path)?),
        None => None,
    };
    if token.is_some() && options.http.is_none() {
        bail!("--http-token-file protects the HTTP drain endpoint: give --http ADDR as well");
    }
    let kernel = Kernel::load(&Target {
        ports: &options.ports,
        netns: &netns,
        privileges: &needed,
        restarts: false,
    })?;
    let engine = Engine::new(kernel, Drain::new(options.drain, None), Duration::ZERO);
    tokio_uring::start(serve(engine, options, token, needed))
}

async fn serve(
    mut engine: Engine,
    options: DaemonOptions,
    token: Option<String>,
    attach_privileges: Vec<Capability>,
) -> Result<i32> {
    let mut event_loop = EventLoop::new(engine.kernel_mut())?;
    let engine = Rc::new(RefCell::new(engine));
    signals::catch(engine.clone())?;
    let control_listener = control::bind(&options.control_socket)?;
    let http_listener = match options.http {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding the HTTP listener to {addr}"))
                .map(tokio_uring::net::TcpListener::from_std)?,
        ),
        None => None,
    };
    // What is left: signalling the release target (which may belong to another user), and
    // attaching the programs when a drain starts.
    capabilities::keep(&[CAP_KILL], &attach_privileges)?;

    let slots = connections::per_listener(1 + usize::from(http_listener.is_some()));
    let (commands, mut requests): (Commands, _) = mpsc::unbounded_channel();
    tokio::task::spawn_local(control::serve(
        control_listener,
        engine.clone(),
        commands.clone(),
        options.allowed.clone(),
        Slots::new(slots),
    ));
    if let Some(listener) = http_listener {
        info!(
            "HTTP on {}: /readyz, /metrics{}",
            options.http.expect("bound"),
            if token.is_some() { ", /drain" } else { "" }
        );
        let http = Rc::new(Http {
            engine: engine.clone(),
            commands: commands.clone(),
            token,
        });
        tokio::task::spawn_local(http::serve(listener, http, Slots::new(slots)));
    }
    info!(
        "control socket {} (each listener serves {slots} connections at once)",
        options.control_socket.display()
    );
    let live = engine.borrow().count()?.live;
    engine
        .borrow()
        .systemd()
        .ready(&format!("serving: {live} live"));

    let acting = Acting::new(&options);
    if let Err(err) = run(&mut event_loop, &engine, &mut requests, &acting).await {
        acting.release_on_failure(&engine.borrow(), &err);
        return Err(err);
    }
    engine.borrow().systemd().stopping("released; exiting");
    // Let waiters read the release before the sockets close.
    sleep(WAITER_GRACE).await;
    info!("exiting");
    Ok(0)
}

/// Runs the loop until the daemon's own stop. A step the engine cannot finish (a count read
/// failing while memory or descriptors run short, say) is logged and taken again later: nothing
/// a client does, and no shortage, ends a drain. Only the loop itself failing ends it.
async fn run(
    event_loop: &mut EventLoop,
    engine: &RefCell<Engine>,
    requests: &mut mpsc::UnboundedReceiver<Command>,
    acting: &Acting<'_>,
) -> Result<()> {
    let mut retry = Retry::default();
    loop {
        // While a step waits to be retried, its time stands in for the engine's timers, which
        // the retry also runs: a timer that failed is due again at once, and must not spin.
        let wakeup = retry.at.or_else(|| engine.borrow().next_wakeup());
        let request = async { requests.recv().await.context("the request channel closed") };
        let mut actions = Vec::new();
        let outcome = match event_loop.next(wakeup, request).await? {
            Input::Engine(EngineInput::Timer) if retry.at.is_some() => {
                // The count first: what a failed step most likely missed is a count that
                // releases.
                let retried = [EngineInput::CountsChanged, EngineInput::Timer]
                    .into_iter()
                    .try_for_each(|input| {
                        actions.extend(engine.borrow_mut().on(input)?);
                        Ok(())
                    });
                if retried.is_ok() {
                    retry.succeeded();
                }
                retried
            }
            Input::Engine(input) => engine.borrow_mut().on(input).map(|done| actions = done),
            Input::Mode(command) => obey(engine, command).map(|done| actions = done),
            // The daemon restarts no server: it watches for no listener.
            Input::Listening => Ok(()),
        };
        if let Err(err) = outcome {
            retry.failed(&err);
        }
        for action in actions {
            acting.carry_out(action);
        }
        acting.catch_up(&engine.borrow());
        if acting.exit.get() {
            return Ok(());
        }
    }
}

/// What the loop does for the engine: signal the release target, and exit when the daemon's
/// own stop came.
struct Acting<'a> {
    options: &'a DaemonOptions,
    exit: Cell<bool>,
    /// Whether the release the policy made has been carried out. The engine hands a release
    /// over as an action, which a step failing after the policy released (its report reads the
    /// count) loses; the release is then carried out from the policy's phase.
    released: Cell<bool>,
}

impl<'a> Acting<'a> {
    fn new(options: &'a DaemonOptions) -> Self {
        Self {
            options,
            exit: Cell::new(false),
            released: Cell::new(false),
        }
    }

    fn carry_out(&self, action: Action) {
        if matches!(action, Action::Release { .. }) {
            self.released.set(true);
        }
        carry_out(action, self.options, &self.exit);
    }

    /// Carries out a release the policy made but a failed step did not hand over.
    fn catch_up(&self, engine: &Engine) {
        match engine.phase() {
            Phase::Released {
                reason, trigger, ..
            } if !self.released.get() => {
                warn!("carrying out the release a failed step left undone");
                self.carry_out(Action::Release { reason, trigger });
            }
            Phase::Serving => self.released.set(false),
            Phase::Draining { .. } | Phase::Released { .. } => {}
        }
    }

    /// The loop cannot go on. A drain under way releases the server now, and says so, rather
    /// than leave it waiting for a release that would never come.
    fn release_on_failure(&self, engine: &Engine, err: &anyhow::Error) {
        match engine.phase() {
            Phase::Draining { trigger, .. } => {
                error!("the daemon cannot go on ({err:#}): releasing the server now");
                // The reason is not read: releasing signals the target, whatever the reason.
                self.carry_out(Action::Release {
                    reason: ReleaseReason::Forced,
                    trigger,
                });
            }
            Phase::Released { .. } if !self.released.get() => {
                error!("the daemon cannot go on ({err:#}): releasing the server now");
                self.catch_up(engine);
            }
            Phase::Released { .. } => {
                error!("the daemon cannot go on ({err:#}): the server was already released");
            }
            Phase::Serving => {
                error!("the daemon cannot go on ({err:#}): no drain under way, nothing to release")
            }
        }
    }
}

/// Carries out a request from the control socket or HTTP, and tells the requester how it went.
fn obey(engine: &RefCell<Engine>, command: Command) -> Result<Vec<Action>> {
    match command {
        Command::Drain { request, done } => {
            info!("drain requested through the control socket or HTTP");
            let started = engine.borrow_mut().drain_request(request);
            match started {
                Ok(Ok(actions)) => {
                    let _ = done.send(Ok(()));
                    Ok(actions)
                }
                Ok(Err(problem)) => {
                    warn!("refused a drain request: {problem}");
                    let _ = done.send(Err(problem));
                    Ok(Vec::new())
                }
                Err(err) => {
                    // A drain that started goes on (and is retried); the requester follows it.
                    let started = engine.borrow().phase() != Phase::Serving;
                    let _ = done.send(if started {
                        Ok(())
                    } else {
                        Err(format!("{err:#}"))
                    });
                    Err(err)
                }
            }
        }
        Command::Release { done } => {
            let released = engine.borrow_mut().force_release();
            let ok = released.is_ok() || matches!(engine.borrow().phase(), Phase::Released { .. });
            let _ = done.send(match &released {
                Err(err) if !ok => Err(format!("{err:#}")),
                _ => Ok(()),
            });
            released
        }
        Command::Resume { done } => {
            let resumed = engine.borrow_mut().resume();
            match resumed {
                Ok(Ok(actions)) => {
                    let _ = done.send(Ok(()));
                    Ok(actions)
                }
                Ok(Err(cannot)) => {
                    warn!("refused to resume: {cannot}");
                    let _ = done.send(Err(cannot.to_string()));
                    Ok(Vec::new())
                }
                Err(err) => {
                    let _ = done.send(Err(format!("{err:#}")));
                    Err(err)
                }
            }
        }
    }
}

/// A step the engine could not finish, taken again ever less often until it succeeds.
#[derive(Default)]
struct Retry {
    /// When to take it again; `None` when nothing failed.
    at: Option<Instant>,
    delay: Duration,
    failing_since: Option<Instant>,
}

const FIRST_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(1);

impl Retry {
    fn failed(&mut self, err: &anyhow::Error) {
        let now = Instant::now();
        let since = *self.failing_since.get_or_insert(now);
        self.delay = if self.at.is_some() {
            (self.delay * 2).min(MAX_RETRY)
        } else {
            FIRST_RETRY
        };
        warn!(
            "{err:#}; failing for {:.1}s: trying again in {:?}",
            (now - since).as_secs_f64(),
            self.delay
        );
        self.at = Some(now + self.delay);
    }

    fn succeeded(&mut self) {
        if let Some(since) = self.failing_since.take() {
            info!(
                "recovered after {:.1}s of failing steps",
                since.elapsed().as_secs_f64()
            );
        }
        self.at = None;
    }
}

fn carry_out(action: Action, options: &DaemonOptions, exit: &Cell<bool>) {
    match action {
        Action::Release { trigger, .. } => {
            if let Some(target) = &options.release_target {
                let signal = options.release_signal;
                match target.signal(signal) {
                    Ok(delivery) if delivery.sent == 0 => {
                        warn!("no process of {target} received {signal}: {delivery}")
                    }
                    Ok(delivery) => info!("sent {signal} to {target}: {delivery}"),
                    Err(err) => error!("did not signal {target}: {err:#}"),
                }
            }
            if matches!(trigger, Trigger::Signal(_)) {
                exit.set(true);
            }
        }
        // A stop signal after release: the daemon's own stop.
        Action::Forward(_) => exit.set(true),
        Action::Kill => {}
    }
}
