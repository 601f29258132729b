//! The drain engine shared by `drainer run` and `drainer daemon`: the kernel handle, the drain
//! policy ([`policy`], a pure state machine) and the reports ([`progress`] in the log and
//! systemd, [`Status`] records), driven by the inputs the event loop yields.
//!
//! What releasing means differs by mode — signalling a child, or a configured target — so the
//! engine hands [`Action`]s back to the mode instead of acting on them.
pub mod policy;
mod progress;

use std::time::{Duration, Instant};

use anyhow::Result;
use drainer_common::protocol::{IdleConnection, Outcome, PortStatus, State, Status};
use nix::sys::signal::Signal;
use tokio::sync::watch;
use tracing::{info, warn};

use self::{
    policy::{Drain, Phase, ReleaseReason, Step, Trigger},
    progress::Progress,
};
use crate::{
    kernel::{Count, Counts, Kernel},
    system::systemd::Systemd,
};

/// How many of the most idle connections `status` lists.
const STATUS_MOST_IDLE: usize = 10;
/// Slack added to systemd's stop timeout on top of what drainer itself will wait.
const SYSTEMD_MARGIN: Duration = Duration::from_secs(15);

/// What wakes the engine, whichever the mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineInput {
    /// SIGTERM or SIGINT reached drainer.
    StopSignal(Signal),
    /// The kernel announced count changes (already consumed from the ring buffer).
    CountsChanged,
    /// The time [`Engine::next_wakeup`] named has come.
    Timer,
}

/// What the mode must do for the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Release {
        reason: ReleaseReason,
        trigger: Trigger,
    },
    Forward(Signal),
    Kill,
}

pub struct Engine {
    kernel: Kernel,
    drain: Drain,
    progress: Progress,
    live_at_start: Option<i64>,
    deadline_hits: u64,
    /// Time drainer will still need after release (the child's `--kill-after`), for systemd.
    after_release: Duration,
    /// Bumped on every change of state or count; waiters watch it.
    changes: watch::Sender<u64>,
}

impl Engine {
    pub fn new(kernel: Kernel, drain: Drain, after_release: Duration) -> Self {
        Self {
            kernel,
            drain,
            progress: Progress::new(Systemd::from_env()),
            live_at_start: None,
            deadline_hits: 0,
            after_release,
            changes: watch::Sender::new(0),
        }
    }

    pub fn kernel_mut(&mut self) -> &mut Kernel {
        &mut self.kernel
    }

    pub fn phase(&self) -> Phase {
        self.drain.phase()
    }

    pub fn systemd(&self) -> &Systemd {
        self.progress.systemd()
    }

    /// Wakes on every change of state or count.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn count(&self) -> Result<Count> {
        Ok(self.counts()?.total())
    }

    fn counts(&self) -> Result<Counts> {
        self.kernel.counts()
    }

    /// Feeds an input every mode shares.
    pub fn on(&mut self, input: EngineInput) -> Result<Vec<Action>> {
        match input {
            EngineInput::StopSignal(signal) => self.stop_signal(signal),
            EngineInput::CountsChanged => self.counts_changed(),
            EngineInput::Timer => self.timer(),
        }
    }

    fn stop_signal(&mut self, signal: Signal) -> Result<Vec<Action>> {
        let step = self.drain.on_stop_signal(signal, Instant::now());
        self.carry_out([step])
    }

    pub fn drain_request(&mut self, timeout: Option<Duration>) -> Result<Vec<Action>> {
        let step = self.drain.on_drain_request(timeout, Instant::now());
        self.carry_out(step)
    }

    pub fn force_release(&mut self) -> Result<Vec<Action>> {
        let steps = self.drain.on_force_release(Instant::now());
        self.carry_out(steps)
    }

    fn counts_changed(&mut self) -> Result<Vec<Action>> {
        let counts = self.counts()?;
        let count = counts.total();
        let now = Instant::now();
        self.progress.warn_if_untrusted(&counts);
        // While serving, only an unrecorded connection is announced: there is no progress to log.
        let draining = self.phase() != Phase::Serving;
        let step = self.drain.on_count(count, now);
        if draining {
            self.progress.count_changed(&self.kernel, count, now);
        }
        // carry_out tells the waiters, whatever the step.
        self.carry_out(step)
    }

    /// When [`EngineInput::Timer`] is next due.
    pub fn next_wakeup(&self) -> Option<Instant> {
        [
            self.drain.next_timer(),
            self.progress.next_line_at(),
            self.table_recheck_at(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A missed close announces nothing: while draining, a count taken from the socket table is
    /// re-read on a timer.
    fn table_recheck_at(&self) -> Option<Instant> {
        match self.phase() {
            Phase::Draining { .. } => self.kernel.recheck_at(),
            Phase::Serving | Phase::Released { .. } => None,
        }
    }

    fn timer(&mut self) -> Result<Vec<Action>> {
        let now = Instant::now();
        if self.table_recheck_at().is_some_and(|at| at <= now) {
            return self.counts_changed();
        }
        if self.progress.next_line_at().is_some_and(|at| at <= now) {
            let count = self.count()?;
            self.progress.log_pending(&self.kernel, count, now);
        }
        let step = self.drain.on_timer(now);
        self.carry_out(step)
    }

    fn carry_out(&mut self, steps: impl IntoIterator<Item = Step>) -> Result<Vec<Action>> {
        let mut actions = Vec::new();
        for step in steps {
            match step {
                Step::StartRefusing => {
                    // Flip first, read after: a close in between then either shows in the count
                    // or arrives as an event.
                    self.kernel.start_refusing()?;
                    let counts = self.counts()?;
                    let count = counts.total();
                    let now = Instant::now();
                    self.live_at_start = Some(count.live);
                    self.progress.drain_started(&self.kernel, &counts, now);
                    if let Phase::Draining { deadline, .. } = self.phase() {
                        let left = deadline.saturating_duration_since(now);
                        self.progress
                            .systemd()
                            .extend_timeout(left + self.after_release + SYSTEMD_MARGIN);
                    }
                    let next = self.drain.on_count(count, now);
                    actions.extend(self.carry_out(next)?);
                }
                Step::Release { reason, trigger } => {
                    self.report_release(reason)?;
                    actions.push(Action::Release { reason, trigger });
                }
                Step::Forward(signal) => actions.push(Action::Forward(signal)),
                Step::Kill => actions.push(Action::Kill),
            }
        }
        self.changes.send_modify(|n| *n += 1);
        Ok(actions)
    }

    fn report_release(&mut self, reason: ReleaseReason) -> Result<()> {
        let count = self.count()?;
        match reason {
            ReleaseReason::Drained => info!(
                live = count.live,
                "drained: no live connections; releasing the server"
            ),
            ReleaseReason::SecondSignal => warn!(
                live = count.live,
                "second stop signal: releasing now with {} connections live", count.live
            ),
            ReleaseReason::Forced => {
                warn!(
                    live = count.live,
                    "release requested with {} connections live", count.live
                )
            }
            ReleaseReason::DeadlinePassed => {
                self.deadline_hits += 1;
                self.progress.report_stragglers(&self.kernel, count);
            }
        }
        self.progress
            .systemd()
            .extend_timeout(self.after_release + SYSTEMD_MARGIN);
        Ok(())
    }

    /// The state now; with the most idle live connections when `with_connections`.
    pub fn status(&self, with_connections: bool) -> Result<Status> {
        let counts = self.counts()?;
        let count = counts.total();
        let now = Instant::now();
        let (elapsed, left, outcome) = match self.phase() {
            Phase::Serving => (None, None, None),
            Phase::Draining {
                started, deadline, ..
            } => (
                Some(now - started),
                Some(deadline.saturating_duration_since(now)),
                None,
            ),
            Phase::Released {
                started,
                at,
                reason,
                ..
            } => (Some(at - started), None, Some(outcome(reason))),
        };
        let most_idle = if with_connections {
            self.kernel
                .most_idle(STATUS_MOST_IDLE)?
                .into_iter()
                .map(|c| IdleConnection {
                    port: c.local_port,
                    peer: c.peer.to_string(),
                    idle_seconds: c.idle.map(|a| a.as_secs_f64()),
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Status {
            state: self.phase().into(),
            live: count.live,
            count_exact: count.exact,
            live_at_drain_start: self.live_at_start,
            refused: counts.refused(),
            missed_state_changes: counts.missed_state_changes,
            drain_elapsed_seconds: elapsed.map(|d| d.as_secs_f64()),
            deadline_left_seconds: left.map(|d| d.as_secs_f64()),
            outcome,
            deadline_hits: self.deadline_hits,
            ports: counts
                .ports
                .iter()
                .map(|c| PortStatus {
                    port: c.port,
                    live: c.live,
                    refused: c.refused,
                    untracked: c.untracked,
                })
                .collect(),
            most_idle,
        })
    }
}

impl From<Phase> for State {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Serving => Self::Serving,
            Phase::Draining { .. } => Self::Draining,
            Phase::Released { .. } => Self::Released,
        }
    }
}

fn outcome(reason: ReleaseReason) -> Outcome {
    match reason {
        ReleaseReason::Drained => Outcome::Drained,
        ReleaseReason::DeadlinePassed => Outcome::DeadlinePassed,
        ReleaseReason::SecondSignal | ReleaseReason::Forced => Outcome::ReleasedEarly,
    }
}
