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
mod control;
mod http;
mod metrics;
mod release_target;
mod requests;
mod waiters;
mod wire;

use std::{
    cell::{Cell, RefCell},
    fs,
    net::SocketAddr,
    path::PathBuf,
    rc::Rc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::Signal;
use tokio::{sync::mpsc, time::sleep};
use tracing::{error, info, warn};

pub use self::{
    access::Allowed,
    release_target::{ReleaseTarget, check_pid},
};
use self::{
    http::Http,
    requests::{Command, Commands},
};
use crate::{
    cli::DrainFlags,
    engine::{
        self, Action, Engine,
        policy::{Drain, Trigger},
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
    pub drain: DrainFlags,
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
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    if token.is_some() && options.http.is_none() {
        bail!("--http-token-file protects the HTTP drain endpoint: give --http ADDR as well");
    }
    let kernel = Kernel::load(&Target {
        ports: &options.ports,
        netns: &netns,
        privileges: &needed,
    })?;
    let engine = Engine::new(
        kernel,
        Drain::new(engine::settings(&options.drain), None),
        Duration::ZERO,
    );
    tokio_uring::start(serve(engine, options, token, needed))
}

async fn serve(
    mut engine: Engine,
    options: DaemonOptions,
    token: Option<String>,
    attach_privileges: Vec<Capability>,
) -> Result<i32> {
    let mut event_loop = EventLoop::new(engine.kernel_mut())?;
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

    let engine = Rc::new(RefCell::new(engine));
    let (commands, mut requests): (Commands, _) = mpsc::unbounded_channel();
    tokio::task::spawn_local(control::serve(
        control_listener,
        engine.clone(),
        commands.clone(),
        options.allowed.clone(),
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
        tokio::task::spawn_local(http::serve(listener, http));
    }
    info!("control socket {}", options.control_socket.display());
    let live = engine.borrow().count()?.live;
    engine
        .borrow()
        .systemd()
        .ready(&format!("serving: {live} live"));

    let exit = Rc::new(Cell::new(false));
    loop {
        let wakeup = engine.borrow().next_wakeup();
        let request = async { requests.recv().await.context("the request channel closed") };
        let actions = match event_loop.next(wakeup, request).await? {
            Input::Engine(input) => engine.borrow_mut().on(input)?,
            Input::Mode(Command::Drain { request, done }) => {
                info!("drain requested through the control socket or HTTP");
                let started = engine.borrow_mut().drain_request(request)?;
                match started {
                    Ok(actions) => {
                        let _ = done.send(Ok(()));
                        actions
                    }
                    Err(problem) => {
                        warn!("refused a drain request: {problem}");
                        let _ = done.send(Err(problem));
                        Vec::new()
                    }
                }
            }
            Input::Mode(Command::Release { done }) => {
                let actions = engine.borrow_mut().force_release()?;
                let _ = done.send(Ok(()));
                actions
            }
            Input::Mode(Command::Resume { done }) => {
                let resumed = engine.borrow_mut().resume()?;
                match resumed {
                    Ok(actions) => {
                        let _ = done.send(Ok(()));
                        actions
                    }
                    Err(cannot) => {
                        warn!("refused to resume: {cannot}");
                        let _ = done.send(Err(cannot.to_string()));
                        Vec::new()
                    }
                }
            }
        };
        for action in actions {
            carry_out(action, &options, &exit);
        }
        if exit.get() {
            engine.borrow().systemd().stopping("released; exiting");
            // Let waiters read the release before the sockets close.
            sleep(WAITER_GRACE).await;
            info!("exiting");
            return Ok(0);
        }
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

fn read_token(path: &std::path::Path) -> Result<String> {
    let token = fs::read_to_string(path)
        .with_context(|| format!("reading the HTTP token file {}", path.display()))?;
    let token = token.trim().to_owned();
    if token.len() < 16 {
        bail!(
            "the token in {} is shorter than 16 characters: use a long random one",
            path.display()
        );
    }
    Ok(token)
}
