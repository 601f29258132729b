//! The channel from the daemon's servers (control socket, HTTP) to the event loop, which alone
//! changes the drain: a server sends a [`Command`] and waits until the loop has carried it out.
use anyhow::{Context as _, Result};
use tokio::sync::{mpsc, oneshot};

use crate::engine::DrainRequest;

/// Told when the command has been carried out, or why it could not be.
pub type Done = oneshot::Sender<Result<(), String>>;

pub enum Command {
    Drain { request: DrainRequest, done: Done },
    Release { done: Done },
    Resume { done: Done },
}

pub type Commands = mpsc::UnboundedSender<Command>;

/// Sends a command and waits until the event loop has carried it out; the inner error says why
/// the loop refused it.
pub async fn ask(
    commands: &Commands,
    command: impl FnOnce(Done) -> Command,
) -> Result<Result<(), String>> {
    let (done, acknowledged) = oneshot::channel();
    commands
        .send(command(done))
        .ok()
        .context("the daemon is shutting down")?;
    acknowledged.await.context("the daemon is shutting down")
}
