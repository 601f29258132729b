//! Following a drain to its release, for `drainer drain --wait` and the HTTP drain endpoint.
use std::{cell::RefCell, future::Future, rc::Rc, time::Duration};

use anyhow::Result;
use drainer_common::protocol::{State, Status};
use tokio::time::{Instant, sleep};

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

/// Calls `report(status, stage)` on changes until the drain under way (or the next one, while
/// serving) ends: released, or resumed.
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
        let status = engine.borrow().status(false)?;
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
