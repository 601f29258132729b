//! The control socket: a Unix stream socket serving the protocol of
//! [`drainer_common::protocol`], one request per connection. A malformed request gets an error
//! reply; nothing a client sends can stop the daemon.
use std::{cell::RefCell, fs, path::Path, rc::Rc, time::Duration};

use anyhow::{Context as _, Result, bail};
use drainer_common::protocol::{MAX_REQUEST, REQUEST_TIME, Reply, Request, parse_request};
use tokio_uring::net::UnixStream;
use tracing::{debug, warn};

use super::{
    access::{self, Allowed},
    requests::{Command, Commands, ask},
    waiters::{Stage, follow},
    wire::{self, Stream as _},
};
use crate::engine::{DrainRequest, Engine};

/// Binds the socket, refusing to replace one a live daemon still answers on.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another drainer daemon is serving {}: stop it first, or give this one its own --control-socket",
                path.display()
            );
        }
        fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    // Anyone may connect; SO_PEERCRED decides who is served.
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
    Ok(listener)
}

/// Accepts through the event loop's readiness (tokio-uring has no Unix listener that takes a
/// bound socket); each connection's reads and writes then go through io_uring.
pub async fn serve(
    listener: std::os::unix::net::UnixListener,
    engine: Rc<RefCell<Engine>>,
    commands: Commands,
    allowed: Allowed,
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
    loop {
        match listener
            .accept()
            .await
            .and_then(|(stream, _)| stream.into_std())
        {
            Ok(stream) => {
                let stream = UnixStream::from_std(stream);
                let (engine, commands, allowed) =
                    (engine.clone(), commands.clone(), allowed.clone());
                tokio::task::spawn_local(async move {
                    if let Err(err) = handle(&stream, &engine, &commands, &allowed).await {
                        debug!("control connection: {err:#}");
                    }
                    finish(&stream).await;
                });
            }
            Err(err) => {
                warn!("control socket accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(
    stream: &UnixStream,
    engine: &Rc<RefCell<Engine>>,
    commands: &Commands,
    allowed: &Allowed,
) -> Result<()> {
    let credentials = access::caller(stream)?;
    // Read before judging, so even a refused client gets its reply rather than a broken pipe.
    let line = wire::read_until(stream, b"\n", MAX_REQUEST, REQUEST_TIME).await;
    if !allowed.permits(&credentials) {
        warn!(
            uid = credentials.uid(),
            pid = credentials.pid(),
            "refused a control request from a user not allowed"
        );
        let message = format!(
            "uid {} may not control drainer: run as root or start the daemon with --allow-uid/--allow-gid",
            credentials.uid()
        );
        return send(stream, &Reply::Error { message }).await;
    }
    let line = match line {
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
