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

/// Calls `report(status, released)` on changes until the server is released; the last call has
/// `released == true`.
pub async fn follow<F, Fut>(engine: &Rc<RefCell<Engine>>, mut report: F) -> Result<()>
where
    F: FnMut(Status, bool) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut changes = engine.borrow().subscribe();
    let mut last_report: Option<Instant> = None;
    loop {
        changes.borrow_and_update();
        let status = engine.borrow().status(false)?;
        let released = status.state == State::Released;
        if released || last_report.is_none_or(|at| at.elapsed() >= MIN_GAP) {
            report(status, released).await?;
            last_report = Some(Instant::now());
        }
        if released {
            return Ok(());
        }
        tokio::select! {
            _ = changes.changed() => {}
            () = sleep(HEARTBEAT) => {}
        }
    }
}
