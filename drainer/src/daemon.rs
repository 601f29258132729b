//! `drainer daemon`: guard ports in a network namespace for a server drainer did not start — a
//! Kubernetes sidecar, a systemd companion. A drain starts on SIGTERM/SIGINT or a request (control
//! socket, HTTP); release unblocks every waiter and signals the configured target.
//!
//! A drain started by a signal ends the daemon at release (its own stop was asked for). A drain
//! started by a request leaves it running, refusing, until it is signalled.
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
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{Instant, sleep, sleep_until},
};
use tracing::{info, warn};

use crate::{
    capabilities::{self, CAP_BPF, CAP_KILL, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN},
    control::{self, Allowed, Command},
    drain::{Drain, Trigger},
    guard::{Action, Guard},
    http::{self, Http},
    loop_io::{drain_ring, flush_logs, watch},
    netns::Netns,
    release_target::ReleaseTarget,
    startup,
};

pub struct DaemonOptions {
    pub ports: Vec<u16>,
    pub netns: Option<PathBuf>,
    pub drain_timeout: Duration,
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
    let attached = startup::attach(&options.ports, &netns)?;
    let _claims = attached.claims;
    let guard = Guard::new(
        attached.programs,
        attached.diag,
        Drain::new(options.drain_timeout, None),
        Duration::ZERO,
    );
    tokio_uring::start(serve(guard, options, token))
}

async fn serve(mut guard: Guard, options: DaemonOptions, token: Option<String>) -> Result<i32> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut events =
        watch(guard.programs_mut().take_events()?).context("watching the event ring buffer")?;
    let mut ebpf_logs =
        watch(guard.programs_mut().take_logger()?).context("watching the eBPF logs")?;
    let control_listener = control::bind(&options.control_socket)?;
    let http_listener = match options.http {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding the HTTP listener to {addr}"))
                .map(tokio_uring::net::TcpListener::from_std)?,
        ),
        None => None,
    };
    // Everything privileged is done; signalling the release target (which may belong to another
    // user) is all that is left.
    capabilities::keep_only(&[CAP_KILL])?;

    let guard = Rc::new(RefCell::new(guard));
    let (commands, mut requests) = mpsc::unbounded_channel();
    tokio::task::spawn_local(control::serve(
        control_listener,
        guard.clone(),
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
            guard: guard.clone(),
            commands: commands.clone(),
            token,
        });
        tokio::task::spawn_local(http::serve(listener, http));
    }
    info!("control socket {}", options.control_socket.display());
    let live = guard.borrow().count()?.live;
    guard
        .borrow()
        .systemd()
        .ready(&format!("serving: {live} live"));

    let exit = Rc::new(Cell::new(false));
    loop {
        let wakeup = guard.borrow().next_wakeup().map(Instant::from_std);
        let actions = tokio::select! {
            _ = terminate.recv() => guard.borrow_mut().stop_signal(Signal::SIGTERM)?,
            _ = interrupt.recv() => guard.borrow_mut().stop_signal(Signal::SIGINT)?,
            Some(command) = requests.recv() => match command {
                Command::Drain { timeout, done } => {
                    info!("drain requested through the control socket or HTTP");
                    let actions = guard.borrow_mut().drain_request(timeout)?;
                    let _ = done.send(());
                    actions
                }
                Command::Release { done } => {
                    let actions = guard.borrow_mut().force_release()?;
                    let _ = done.send(());
                    actions
                }
            },
            ready = events.readable_mut() => {
                drain_ring(ready?);
                guard.borrow_mut().counts_changed()?
            }
            ready = ebpf_logs.readable_mut() => {
                flush_logs(ready?);
                Vec::new()
            }
            () = sleep_until(wakeup.unwrap_or_else(Instant::now)), if wakeup.is_some() => guard.borrow_mut().timer()?,
        };
        for action in actions {
            carry_out(action, &options, &exit);
        }
        if exit.get() {
            guard.borrow().systemd().stopping("released; exiting");
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
                match target.signal(options.release_signal) {
                    Ok(n) => info!(
                        "sent {} to {n} process(es) of {target:?}",
                        options.release_signal
                    ),
                    Err(err) => warn!("cannot signal the release target: {err:#}"),
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
