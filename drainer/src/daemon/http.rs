//! The optional HTTP listener (`--http ADDR`): `/readyz`, `/metrics`, and `/drain`, which starts
//! a drain and answers only at release, so a Kubernetes preStop `httpGet` holds the app's SIGTERM
//! back until then. `/drain` needs `Authorization: Bearer <token>` (`--http-token-file`).
use std::{cell::RefCell, rc::Rc};

use anyhow::Result;
use drainer_common::{
    http::{HEAD_TIME, MAX_HEAD, Route, route},
    protocol::{Outcome, State},
};
use tokio_uring::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::{
    connections::{Backoff, Slots},
    metrics,
    requests::{Command, Commands, ask},
    waiters::{Stage, follow},
    wire::{self, Stream as _},
};
use crate::engine::{DrainRequest, Engine};

pub struct Http {
    pub engine: Rc<RefCell<Engine>>,
    pub commands: Commands,
    /// `None`: the drain endpoint is disabled.
    pub token: Option<String>,
}

struct Response {
    code: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(code: u16, reason: &'static str, body: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.code,
            self.reason,
            self.content_type,
            self.body.len(),
            self.body
        )
        .into_bytes()
    }
}

/// Serves at most `slots` connections at once; anyone can connect, so an idle one is answered
/// and closed when its head is not in by [`HEAD_TIME`].
pub async fn serve(listener: TcpListener, http: Rc<Http>, slots: Slots) {
    let mut backoff = Backoff::new("HTTP");
    loop {
        let slot = slots.take().await;
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff.succeeded();
                let http = http.clone();
                tokio::task::spawn_local(async move {
                    let response = respond(&stream, &http).await;
                    debug!(%peer, code = response.code, "http request");
                    let _ = stream.write_bytes(response.into_bytes()).await;
                    // A read given up on (a head not in by HEAD_TIME) is still in the kernel's
                    // hands, and keeps the descriptor open until it completes: until the client
                    // sends or closes, which it may never do. Shutting the socket down
                    // completes it now, so the descriptor closes with the connection's slot.
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    drop(slot);
                });
            }
            Err(err) => backoff.failed(&err).await,
        }
    }
}

async fn respond(stream: &TcpStream, http: &Http) -> Response {
    let head = match wire::read_until(stream, b"\r\n\r\n", MAX_HEAD, HEAD_TIME).await {
        Ok(head) => head,
        Err(err) => return Response::text(400, "Bad Request", format!("{err}\n")),
    };
    let Ok(route) = route(&head) else {
        return Response::text(400, "Bad Request", "malformed HTTP request\n");
    };
    match route {
        Route::Readyz => readyz(http),
        Route::Metrics => match http.engine.borrow().status(false) {
            Ok(status) => Response {
                code: 200,
                reason: "OK",
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body: metrics::render(&status),
            },
            Err(err) => Response::text(500, "Internal Server Error", format!("{err:#}\n")),
        },
        Route::Drain { bearer } => drain(http, bearer).await,
        Route::MethodNotAllowed => {
            Response::text(405, "Method Not Allowed", "method not allowed\n")
        }
        Route::NotFound => Response::text(
            404,
            "Not Found",
            "not found: try /readyz, /metrics or /drain\n",
        ),
    }
}

/// From the state alone: a probe every few seconds from every kubelet and balancer costs no
/// count.
fn readyz(http: &Http) -> Response {
    match http.engine.borrow().state() {
        State::Serving => Response::text(200, "OK", "serving\n"),
        state => Response::text(503, "Service Unavailable", format!("{}\n", state.as_str())),
    }
}

async fn drain(http: &Http, bearer: Option<&[u8]>) -> Response {
    let Some(token) = &http.token else {
        return Response::text(
            403,
            "Forbidden",
            "the drain endpoint is disabled: start drainer with --http-token-file\n",
        );
    };
    if !bearer.is_some_and(|presented| constant_time_eq(presented, token.as_bytes())) {
        warn!("refused an HTTP drain request without a valid token");
        return Response::text(
            401,
            "Unauthorized",
            "a valid `Authorization: Bearer <token>` header is required\n",
        );
    }
    info!("drain requested over HTTP");
    match ask(&http.commands, |done| Command::Drain {
        request: DrainRequest::default(),
        done,
    })
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(message)) => return Response::text(409, "Conflict", format!("{message}\n")),
        Err(_) => {
            return Response::text(503, "Service Unavailable", "drainer is shutting down\n");
        }
    }
    let mut outcome = None;
    let mut resumed = false;
    let followed: Result<()> = follow(&http.engine, |status, stage| {
        match stage {
            Stage::Released => outcome = Some((status.outcome, status.live)),
            Stage::Resumed => resumed = true,
            Stage::Progress => {}
        }
        async { Ok(()) }
    })
    .await;
    if resumed {
        return Response::text(
            409,
            "Conflict",
            "the drain was resumed before release: drainer serves again\n",
        );
    }
    match (followed, outcome) {
        (Ok(()), Some((Some(Outcome::DeadlinePassed), live))) => Response::text(
            504,
            "Gateway Timeout",
            format!("deadline passed with {live} connections live\n"),
        ),
        (Ok(()), Some((Some(Outcome::ReleasedEarly), live))) => Response::text(
            200,
            "OK",
            format!("released early with {live} connections live\n"),
        ),
        (Ok(()), _) => Response::text(200, "OK", "drained\n"),
        (Err(err), _) => Response::text(500, "Internal Server Error", format!("{err:#}\n")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
