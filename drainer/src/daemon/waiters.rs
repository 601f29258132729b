//! Following a drain to its release, for `drainer drain --wait` and the HTTP drain endpoint.
use std::{cell::RefCell, future::Future, rc::Rc, time::Duration};

use anyhow::Result;
use drainer_common::protocol::{State, Status};
use tokio::time::{Instant, sleep};
use tracing::warn;

use crate::engine::Engine;

/// Progress reports come at least this often while draining, so elapsed time and deadline keep
/// moving on the waiter's side...
const HEARTBEAT: Duration = Duration::from_millis(500);
/// ...and at most this often, however fast the count changes. The release is never delayed.
const MIN_GAP: Duration = Duration::from_millis(100);

/// Where the drain a waiter follows stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Progress,
    /// The server was released: the last report.
    Released,
    /// The drain was resumed before release: the last report.
    Resumed,
}

/// A status that cannot be read now (the socket table's dump failing for want of memory, say)
/// is read again this much later: a waiter is the preStop hook or the script that stops the
/// server once it returns, so it must not return before the drain ends.
const RETRY: Duration = Duration::from_millis(200);

/// Calls `report(status, stage)` on changes until the drain under way (or the next one, while
/// serving) ends: released, or resumed. Fails only when `report` does (the waiter has gone).
pub async fn follow<F, Fut>(engine: &Rc<RefCell<Engine>>, mut report: F) -> Result<()>
where
    F: FnMut(Status, Stage) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut changes = engine.borrow().subscribe();
    let mut last_report: Option<Instant> = None;
    // The drain followed, by its number, once one is under way.
    let mut followed: Option<u64> = None;
    loop {
        changes.borrow_and_update();
        let read = engine.borrow().status(false);
        let status = match read {
            Ok(status) => status,
            Err(err) => {
                warn!("a waiter cannot read the status ({err:#}): trying again in {RETRY:?}");
                sleep(RETRY).await;
                continue;
            }
        };
        let stage = match followed {
            Some(drain) if status.state == State::Serving || status.drains_started != drain => {
                Stage::Resumed
            }
            _ if status.state == State::Released => Stage::Released,
            _ => Stage::Progress,
        };
        if followed.is_none() && status.state != State::Serving {
            followed = Some(status.drains_started);
        }
        let last = stage != Stage::Progress;
        if last || last_report.is_none_or(|at| at.elapsed() >= MIN_GAP) {
            report(status, stage).await?;
            last_report = Some(Instant::now());
        }
        if last {
            return Ok(());
        }
        tokio::select! {
            _ = changes.changed() => {}
            () = sleep(HEARTBEAT) => {}
        }
    }
}
