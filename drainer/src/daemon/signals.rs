//! The signals a daemon does not stop on. SIGHUP, SIGUSR1, SIGUSR2 and SIGQUIT end a process by
//! default; a daemon ended by one mid-drain would drop its refusal and never signal its release
//! target. They are caught from start-up on: SIGHUP logs the state, the others are noted and
//! ignored. (`drainer run` passes them through to its server instead.)
use std::{cell::RefCell, rc::Rc};

use anyhow::Result;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::engine::Engine;

/// Catches the signals; call inside the runtime. They are caught once this returns.
pub fn catch(engine: Rc<RefCell<Engine>>) -> Result<()> {
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::task::spawn_local(async move {
        while hangup.recv().await.is_some() {
            let status = engine.borrow().status(false);
            match status {
                Ok(status) => info!(
                    "SIGHUP: {}, {} live; drainer daemon stops on SIGTERM or SIGINT only",
                    status.state.as_str(),
                    status.live
                ),
                Err(err) => warn!("SIGHUP: the state cannot be read now: {err:#}"),
            }
        }
    });
    for (kind, name) in [
        (SignalKind::user_defined1(), "SIGUSR1"),
        (SignalKind::user_defined2(), "SIGUSR2"),
        (SignalKind::quit(), "SIGQUIT"),
    ] {
        let mut stream = signal(kind)?;
        tokio::task::spawn_local(async move {
            while stream.recv().await.is_some() {
                warn!("ignored {name}: drainer daemon stops on SIGTERM or SIGINT only");
            }
        });
    }
    Ok(())
}
