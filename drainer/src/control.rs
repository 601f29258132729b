//! The control socket: a Unix stream socket that takes one JSON request per connection —
//! `status`, `drain` (optionally waiting), `wait`, `release` — and answers in JSON lines.
//!
//! Only root and the uids/gids given with `--allow-uid`/`--allow-gid` may use it; the kernel
//! vouches for the caller (SO_PEERCRED). A malformed request gets an error reply; nothing a
//! client sends can stop the daemon.
use std::{cell::RefCell, fs, os::fd::AsRawFd as _, path::Path, rc::Rc, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_uring::net::UnixStream;
use tracing::{debug, warn};

use crate::{
    follow::follow,
    guard::Guard,
    status::Status,
    wire::{self, Stream as _},
};

pub const MAX_REQUEST: usize = 4096;
pub const REQUEST_TIME: Duration = Duration::from_secs(5);
/// The longest drain deadline a request may ask for.
const MAX_TIMEOUT_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

#[derive(Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    // Braced, so that unknown fields are refused for every command.
    Status {},
    Drain {
        #[serde(default)]
        wait: bool,
        /// This drain's deadline, if it starts it; the daemon's `--drain-timeout` otherwise.
        #[serde(default)]
        timeout_seconds: Option<f64>,
    },
    Wait {},
    Release {},
}

#[derive(Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    Status(Status),
    Progress(Status),
    Released(Status),
    Error { message: String },
}

/// Parses one request line.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|_| {
        "request is not UTF-8; send one JSON line such as {\"command\":\"status\"}".to_owned()
    })?;
    // serde would also take the tagged enum as an array; only objects are requests.
    if !text.trim_start().starts_with('{') {
        return Err(
            "a request is one JSON object per line, such as {\"command\":\"status\"}".to_owned(),
        );
    }
    let request: Request = serde_json::from_str(text.trim_end()).map_err(|err| {
        format!("bad request ({err}); send one JSON line such as {{\"command\":\"status\"}}")
    })?;
    if let Request::Drain {
        timeout_seconds: Some(seconds),
        ..
    } = request
        && !(seconds > 0.0 && seconds <= MAX_TIMEOUT_SECONDS)
    {
        return Err(format!(
            "timeout_seconds must be in (0, {MAX_TIMEOUT_SECONDS}]"
        ));
    }
    Ok(request)
}

/// What the control socket asks of the event loop, which alone changes the drain.
pub enum Command {
    Drain {
        timeout: Option<Duration>,
        done: oneshot::Sender<()>,
    },
    Release {
        done: oneshot::Sender<()>,
    },
}

/// Who may use the socket besides root.
#[derive(Clone, Debug, Default)]
pub struct Allowed {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl Allowed {
    fn permits(&self, uid: u32, gid: u32) -> bool {
        uid == 0 || self.uids.contains(&uid) || self.gids.contains(&gid)
    }
}

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
    guard: Rc<RefCell<Guard>>,
    commands: mpsc::UnboundedSender<Command>,
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
                let (guard, commands, allowed) = (guard.clone(), commands.clone(), allowed.clone());
                tokio::task::spawn_local(async move {
                    if let Err(err) = handle(&stream, &guard, &commands, &allowed).await {
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
    guard: &Rc<RefCell<Guard>>,
    commands: &mpsc::UnboundedSender<Command>,
    allowed: &Allowed,
) -> Result<()> {
    let credentials = nix::sys::socket::getsockopt(
        &unsafe_borrow(stream.as_raw_fd()),
        nix::sys::socket::sockopt::PeerCredentials,
    )?;
    // Read before judging, so even a refused client gets its reply rather than a broken pipe.
    let line = wire::read_until(stream, b"\n", MAX_REQUEST, REQUEST_TIME).await;
    if !allowed.permits(credentials.uid(), credentials.gid()) {
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
            let status = guard.borrow().status(true)?;
            send(stream, &Reply::Status(status)).await
        }
        Request::Drain {
            wait,
            timeout_seconds,
        } => {
            let timeout = timeout_seconds.map(Duration::from_secs_f64);
            ask(commands, |done| Command::Drain { timeout, done }).await?;
            if wait {
                follow_to_release(stream, guard).await
            } else {
                let status = guard.borrow().status(false)?;
                send(stream, &Reply::Status(status)).await
            }
        }
        Request::Wait {} => follow_to_release(stream, guard).await,
        Request::Release {} => {
            ask(commands, |done| Command::Release { done }).await?;
            let status = guard.borrow().status(false)?;
            send(stream, &Reply::Status(status)).await
        }
    }
}

async fn ask(
    commands: &mpsc::UnboundedSender<Command>,
    command: impl FnOnce(oneshot::Sender<()>) -> Command,
) -> Result<()> {
    let (done, acknowledged) = oneshot::channel();
    commands
        .send(command(done))
        .ok()
        .context("the daemon is shutting down")?;
    acknowledged.await.context("the daemon is shutting down")
}

async fn follow_to_release(stream: &UnixStream, guard: &Rc<RefCell<Guard>>) -> Result<()> {
    follow(guard, |status, released| async move {
        let reply = if released {
            Reply::Released(status)
        } else {
            Reply::Progress(status)
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

/// A borrowed descriptor for nix's socket-option calls.
fn unsafe_borrow(fd: std::os::fd::RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: used only within `handle`, while the stream that owns `fd` is alive.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_request() {
        assert_eq!(
            parse_request(b"{\"command\":\"status\"}\n"),
            Ok(Request::Status {})
        );
        assert_eq!(
            parse_request(b"{\"command\":\"drain\",\"wait\":true,\"timeout_seconds\":30}\n"),
            Ok(Request::Drain {
                wait: true,
                timeout_seconds: Some(30.0)
            })
        );
        assert_eq!(
            parse_request(b"{\"command\":\"drain\"}"),
            Ok(Request::Drain {
                wait: false,
                timeout_seconds: None
            })
        );
        assert_eq!(
            parse_request(b"{\"command\":\"wait\"}"),
            Ok(Request::Wait {})
        );
        assert_eq!(
            parse_request(b"{\"command\":\"release\"}"),
            Ok(Request::Release {})
        );
    }

    #[test]
    fn rejects_malformed_requests() {
        for bad in [
            &b""[..],
            b"status",
            b"{}",
            b"{\"command\":\"reboot\"}",
            b"{\"command\":\"status\",\"extra\":1}",
            b"{\"command\":\"drain\",\"wait\":\"yes\"}",
            b"{\"command\":\"drain\",\"timeout_seconds\":-1}",
            b"{\"command\":\"drain\",\"timeout_seconds\":1e300}",
            b"[\"status\"]",
            b"\xff\xfe",
            b"{\"command\":\"status\"",
        ] {
            assert!(
                parse_request(bad).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
