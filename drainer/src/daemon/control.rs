//! The control socket: a Unix stream socket serving the protocol of
//! [`drainer_common::protocol`], one request per connection. A malformed request gets an error
//! reply; nothing a client sends can stop the daemon.
//!
//! Anyone may connect (mode 0666): SO_PEERCRED decides who is served, at once on accept, before
//! anything is read, so a refused user's connection is answered and closed without holding a
//! descriptor any longer. Served connections are capped ([`Slots`]).
use std::{
    cell::{Cell, RefCell},
    fs,
    io::ErrorKind,
    os::unix::{fs::FileTypeExt as _, net::UnixListener},
    path::Path,
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use drainer_common::protocol::{MAX_REQUEST, REQUEST_TIME, Reply, Request, parse_request};
use nix::sys::{socket::UnixCredentials, stat::Mode};
use tokio_uring::net::UnixStream;
use tracing::{debug, warn};

use super::{
    access::{self, Allowed},
    connections::{Backoff, Slots},
    requests::{Command, Commands, ask},
    waiters::{Stage, follow},
    wire::{self, Stream as _},
};
use crate::engine::{DrainRequest, Engine};

/// Binds the socket. Whatever the path holds already is left alone, unless it is a socket no
/// daemon answers on (one a killed daemon left): a symlink is never followed, a file never
/// deleted. The socket is created with its mode through the umask, never chmodded afterwards:
/// chmod follows a symlink someone puts at the path in between.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match fs::symlink_metadata(path) {
        Ok(found) if found.file_type().is_socket() => remove_stale(path)?,
        Ok(found) => bail!(
            "{} exists and is {}, not a socket: drainer replaces only a socket a stopped daemon \
             left; remove it yourself or give --control-socket another path",
            path.display(),
            describe(found.file_type())
        ),
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("inspecting {}", path.display())),
    }
    // Anyone may connect; SO_PEERCRED decides who is served. bind(2) creates the socket file
    // with 0777 less the umask, and fails on anything at the path, a symlink included.
    let previous = nix::sys::stat::umask(Mode::from_bits_truncate(0o111));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(previous);
    bound.with_context(|| format!("binding {}", path.display()))
}

/// Removes the socket at `path` if no daemon answers on it.
fn remove_stale(path: &Path) -> Result<()> {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!(
            "another drainer daemon is serving {}: stop it first, or give this one its own \
             --control-socket",
            path.display()
        ),
        Err(err) if err.kind() == ErrorKind::ConnectionRefused => fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display())),
        Err(err) => Err(err).with_context(|| {
            format!(
                "{} is a socket drainer cannot connect to, so cannot tell whether a daemon \
                 serves it: remove it yourself or give --control-socket another path",
                path.display()
            )
        }),
    }
}

fn describe(kind: fs::FileType) -> &'static str {
    if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// What a connection needs from the daemon.
#[derive(Clone)]
struct Server {
    engine: Rc<RefCell<Engine>>,
    commands: Commands,
    allowed: Allowed,
    refusals: Rc<Refusals>,
}

/// Accepts through the event loop's readiness (tokio-uring has no Unix listener that takes a
/// bound socket); each connection's reads and writes then go through io_uring.
pub async fn serve(
    listener: UnixListener,
    engine: Rc<RefCell<Engine>>,
    commands: Commands,
    allowed: Allowed,
    slots: Slots,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixListener::from_std(listener))
    {
        Ok(listener) => listener,
        Err(err) => {
            warn!("control socket unusable: {err}");
            return;
        }
    };
    let server = Server {
        engine,
        commands,
        allowed,
        refusals: Rc::new(Refusals::default()),
    };
    let mut backoff = Backoff::new("control socket");
    loop {
        let slot = slots.take().await;
        match listener
            .accept()
            .await
            .and_then(|(stream, _)| stream.into_std())
        {
            Ok(stream) => {
                backoff.succeeded();
                let server = server.clone();
                tokio::task::spawn_local(async move {
                    connection(UnixStream::from_std(stream), &server).await;
                    drop(slot);
                });
            }
            Err(err) => backoff.failed(&err).await,
        }
    }
}

async fn connection(stream: UnixStream, server: &Server) {
    let credentials = match access::caller(&stream) {
        Ok(credentials) => credentials,
        Err(err) => {
            debug!("control connection without credentials: {err:#}");
            return;
        }
    };
    if !server.allowed.permits(&credentials) {
        server.refusals.note(&credentials);
        // Nothing is read: the reply goes out, and the connection closes at once. A client
        // whose request is still unread can read the reply before it sees the reset.
        let message = format!(
            "uid {} may not control drainer: run as root or start the daemon with --allow-uid/--allow-gid",
            credentials.uid()
        );
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIME, send(&stream, &Reply::Error { message }))
            .await;
        return;
    }
    if let Err(err) = handle(&stream, &server.engine, &server.commands, &credentials).await {
        debug!("control connection: {err:#}");
    }
    finish(&stream).await;
    // A read given up on stays in the kernel's hands, holding the descriptor open until the
    // client sends or closes; shutting the socket down completes it now.
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// A refusal is a short line into an empty socket buffer; this only bounds a pathological case.
const REFUSAL_WRITE_TIME: Duration = Duration::from_secs(1);
/// Refusals are logged at most this often, with how many were not.
const REFUSAL_LOG_GAP: Duration = Duration::from_secs(1);

/// Logs refused connections without letting a flood of them flood the log.
#[derive(Default)]
struct Refusals {
    logged_at: Cell<Option<Instant>>,
    unlogged: Cell<u64>,
}

impl Refusals {
    fn note(&self, caller: &UnixCredentials) {
        if self
            .logged_at
            .get()
            .is_some_and(|at| at.elapsed() < REFUSAL_LOG_GAP)
        {
            self.unlogged.set(self.unlogged.get() + 1);
            return;
        }
        let more = self.unlogged.replace(0);
        warn!(
            uid = caller.uid(),
            pid = caller.pid(),
            "refused a control request from a user not allowed{}",
            if more > 0 {
                format!(" ({more} more refused in the last second, not logged)")
            } else {
                String::new()
            }
        );
        self.logged_at.set(Some(Instant::now()));
    }
}

/// Serves one request from a caller who may control drainer.
async fn handle(
    stream: &UnixStream,
    engine: &Rc<RefCell<Engine>>,
    commands: &Commands,
    credentials: &UnixCredentials,
) -> Result<()> {
    let line = match wire::read_until(stream, b"\n", MAX_REQUEST, REQUEST_TIME).await {
        Ok(line) => line,
        Err(err) => {
            return send(
                stream,
                &Reply::Error {
                    message: err.to_string(),
                },
            )
            .await;
        }
    };
    let request = match parse_request(&line) {
        Ok(request) => request,
        Err(message) => return send(stream, &Reply::Error { message }).await,
    };
    debug!(uid = credentials.uid(), ?request, "control request");
    match request {
        Request::Status {} => {
            let status = engine.borrow().status(true)?;
            send(stream, &Reply::Status(status)).await
        }
        Request::Drain {
            wait,
            timeout_seconds,
            accept_for_seconds,
            release_when_idle_seconds,
        } => {
            let request = DrainRequest {
                timeout: timeout_seconds.map(Duration::from_secs_f64),
                accept_for: accept_for_seconds.map(Duration::from_secs_f64),
                release_when_idle: release_when_idle_seconds.map(Duration::from_secs_f64),
            };
            if let Err(message) = ask(commands, |done| Command::Drain { request, done }).await? {
                return send(stream, &Reply::Error { message }).await;
            }
            if wait {
                follow_to_release(stream, engine).await
            } else {
                let status = engine.borrow().status(false)?;
                send(stream, &Reply::Status(status)).await
            }
        }
        Request::Wait {} => follow_to_release(stream, engine).await,
        Request::Release {} => {
            if let Err(message) = ask(commands, |done| Command::Release { done }).await? {
                return send(stream, &Reply::Error { message }).await;
            }
            let status = engine.borrow().status(false)?;
            send(stream, &Reply::Status(status)).await
        }
        Request::Resume {} => {
            if let Err(message) = ask(commands, |done| Command::Resume { done }).await? {
                return send(stream, &Reply::Error { message }).await;
            }
            let status = engine.borrow().status(false)?;
            send(stream, &Reply::Status(status)).await
        }
    }
}

async fn follow_to_release(stream: &UnixStream, engine: &Rc<RefCell<Engine>>) -> Result<()> {
    follow(engine, |status, stage| async move {
        let reply = match stage {
            Stage::Progress => Reply::Progress(status),
            Stage::Released => Reply::Released(status),
            Stage::Resumed => Reply::Resumed(status),
        };
        send(stream, &reply).await
    })
    .await
}

async fn send(stream: &UnixStream, reply: &Reply) -> Result<()> {
    let mut line = serde_json::to_vec(reply)?;
    line.push(b'\n');
    stream.write_bytes(line).await?;
    Ok(())
}

/// Ends a connection without losing the reply: input the client is still sending (an oversized
/// request) is read and dropped, briefly, since closing a socket with unread input resets it.
async fn finish(stream: &UnixStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let discard = async {
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read_some(vec![0; 4096]).await {
                (Ok(0) | Err(_), _) => break,
                (Ok(n), _) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), discard).await;
}
