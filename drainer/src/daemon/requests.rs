//! The channel from the daemon's servers (control socket, HTTP) to the event loop, which alone
//! changes the drain: a server sends a [`Command`] and waits until the loop has carried it out.
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::sync::{mpsc, oneshot};

pub enum Command {
    Drain {
        /// This drain's deadline, if the request starts it.
        timeout: Option<Duration>,
        done: oneshot::Sender<()>,
    },
    Release {
        done: oneshot::Sender<()>,
    },
}

pub type Commands = mpsc::UnboundedSender<Command>;

/// Sends a command and waits until the event loop has carried it out.
pub async fn ask(
    commands: &Commands,
    command: impl FnOnce(oneshot::Sender<()>) -> Command,
) -> Result<()> {
    let (done, acknowledged) = oneshot::channel();
    commands
        .send(command(done))
        .ok()
        .context("the daemon is shutting down")?;
    acknowledged.await.context("the daemon is shutting down")
}
