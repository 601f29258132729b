//! The drain engine shared by `drainer run` and `drainer daemon`: the kernel handle, the drain
//! policy ([`policy`], a pure state machine) and the reports ([`progress`] in the log and
//! systemd, [`Status`] records), driven by the inputs the event loop yields.
//!
//! What releasing means differs by mode — signalling a child, or a configured target — so the
//! engine hands [`Action`]s back to the mode instead of acting on them.
pub mod policy;
mod progress;

pub use self::progress::report_stragglers;

use std::{
    cell::RefCell,
    time::{Duration, Instant},
};

use anyhow::Result;
use drainer_common::protocol::{IdleConnection, Outcome, PortStatus, State, Status};
use nix::sys::signal::Signal;
use tokio::sync::watch;
use tracing::{info, warn};

use self::{
    policy::{Activity, CannotResume, Drain, DrainSettings, Phase, ReleaseReason, Step, Trigger},
    progress::Progress,
};
use crate::{
    kernel::{Count, Counts, Idleness, Kernel, TableSocket, Whose},
    system::systemd::Systemd,
};

/// How many of the most idle connections `status` lists.
const STATUS_MOST_IDLE: usize = 10;
/// A count the socket table gave serves further reports for this many times as long as reading it
/// took, so reports take at most about a tenth of the loop's time, however often clients ask.
const REPORT_REUSE_PER_READ: u32 = 10;

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

/// A drain request's own settings; what it leaves out comes from the configured ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainRequest {
    pub timeout: Option<Duration>,
    pub accept_for: Option<Duration>,
    pub release_when_idle: Option<Duration>,
}

/// New connections arriving while a drain still accepts them.
#[derive(Clone, Copy, Debug)]
struct AcceptWindow {
    opened_at_start: u64,
    opened: u64,
    last_arrival: Option<Instant>,
}

pub struct Engine {
    kernel: Kernel,
    drain: Drain,
    progress: Progress,
    live_at_start: Option<i64>,
    drains_started: u64,
    deadline_hits: u64,
    window: Option<AcceptWindow>,
    /// How the drain under way (or the last one) runs.
    settings: Option<DrainSettings>,
    /// The live connections against the drain's idle threshold, when last looked at.
    idleness: Option<Idleness>,
    /// Time drainer will still need after release (the child's `--kill-after`), for systemd.
    after_release: Duration,
    /// Bumped on every change of state or count; waiters watch it.
    changes: watch::Sender<u64>,
    report_counts: RefCell<Option<ReportCounts>>,
}

/// The last count a report read from the socket table. Reports (status, /metrics, waiters'
/// progress) are asked for by clients, as often as they like, and a dump of a large table takes
/// the loop for a while (a third of a second at a million connections): reports between two
/// changes the engine saw share one dump, for a time that grows with what the dump cost, so
/// clients cannot keep the loop dumping. A small table costs a millisecond, and is reused for
/// ten.
struct ReportCounts {
    change: u64,
    read_at: Instant,
    reuse_for: Duration,
    counts: Counts,
}

impl Engine {
    pub fn new(kernel: Kernel, drain: Drain, after_release: Duration) -> Self {
        Self {
            kernel,
            drain,
            progress: Progress::new(Systemd::from_env()),
            live_at_start: None,
            drains_started: 0,
            deadline_hits: 0,
            window: None,
            settings: None,
            idleness: None,
            after_release,
            changes: watch::Sender::new(0),
            report_counts: RefCell::new(None),
        }
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
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
        let steps = self.drain.on_stop_signal(signal, Instant::now());
        self.carry_out(steps)
    }

    /// Starts a drain with the request's settings, or joins the one under way; the inner error
    /// says why the settings cannot make a drain.
    pub fn drain_request(&mut self, request: DrainRequest) -> Result<Result<Vec<Action>, String>> {
        let defaults = self.drain.defaults();
        let settings = DrainSettings {
            timeout: request.timeout.unwrap_or(defaults.timeout),
            accept_for: request.accept_for.unwrap_or(defaults.accept_for),
            release_when_idle: request.release_when_idle.or(defaults.release_when_idle),
        };
        if self.phase() == Phase::Serving
            && let Err(problem) = settings.check()
        {
            return Ok(Err(problem));
        }
        let steps = self.drain.on_drain_request(settings, Instant::now());
        self.carry_out(steps).map(Ok)
    }

    pub fn force_release(&mut self) -> Result<Vec<Action>> {
        let steps = self.drain.on_force_release(Instant::now());
        self.carry_out(steps)
    }

    /// Back to serving, if the drain was started by a request.
    pub fn resume(&mut self) -> Result<Result<Vec<Action>, CannotResume>> {
        match self.drain.on_resume() {
            Ok(step) => self.carry_out([step]).map(Ok),
            Err(cannot) => Ok(Err(cannot)),
        }
    }

    fn counts_changed(&mut self) -> Result<Vec<Action>> {
        let counts = self.counts()?;
        let count = counts.total();
        let now = Instant::now();
        self.progress.warn_if_untrusted(&counts);
        if let Some(window) = &mut self.window
            && counts.opened() > window.opened
        {
            window.opened = counts.opened();
            window.last_arrival = Some(now);
        }
        // While serving nothing is attached; an event still in the ring from a resumed drain has
        // no progress to log.
        let draining = self.phase() != Phase::Serving;
        let activity = self.activity(now)?;
        let step = self.drain.on_count(count, activity, now);
        if draining {
            self.progress
                .count_changed(&self.kernel, count, self.idleness.as_ref(), now);
        }
        // carry_out tells the waiters, whatever the step.
        self.carry_out(step)
    }

    /// Looks at the live connections' activity when the drain releases on idleness and refuses.
    fn activity(&mut self, now: Instant) -> Result<Activity> {
        let Phase::Draining {
            refusing: true,
            settings:
                DrainSettings {
                    release_when_idle: Some(idle_for),
                    ..
                },
            ..
        } = self.phase()
        else {
            self.idleness = None;
            return Ok(Activity::Unknown);
        };
        let idleness = self.kernel.idleness(idle_for, now, Whose::Serving)?;
        let activity = if idleness.active.is_empty() {
            Activity::AllIdle
        } else {
            Activity::Busy
        };
        self.idleness = Some(idleness);
        Ok(activity)
    }

    /// When [`EngineInput::Timer`] is next due.
    pub fn next_wakeup(&self) -> Option<Instant> {
        [
            self.drain.next_timer(),
            self.progress.next_line_at(),
            self.table_recheck_at(),
            self.idle_check_at(),
            self.systemd().renew_at(),
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

    /// A connection falling silent announces nothing either: the time the least recently active
    /// one could next count as idle.
    fn idle_check_at(&self) -> Option<Instant> {
        match self.phase() {
            Phase::Draining { .. } => self.idleness.as_ref().and_then(|i| i.next_check),
            Phase::Serving | Phase::Released { .. } => None,
        }
    }

    fn timer(&mut self) -> Result<Vec<Action>> {
        let now = Instant::now();
        self.systemd().renew(now);
        let due = |at: Option<Instant>| at.is_some_and(|at| at <= now);
        if due(self.table_recheck_at()) || due(self.idle_check_at()) {
            return self.counts_changed();
        }
        if due(self.progress.next_line_at()) {
            let count = self.count()?;
            self.progress
                .log_pending(&self.kernel, count, self.idleness.as_ref(), now);
        }
        let steps = self.drain.on_timer(now);
        self.carry_out(steps)
    }

    fn carry_out(&mut self, steps: impl IntoIterator<Item = Step>) -> Result<Vec<Action>> {
        let mut actions = Vec::new();
        for step in steps {
            match step {
                Step::StartDraining => self.start_draining()?,
                Step::StartRefusing => {
                    self.kernel.start_refusing()?;
                    if let Some(window) = self.window.take() {
                        self.progress.accept_window_closed(
                            window.opened - window.opened_at_start,
                            window.last_arrival,
                            Instant::now(),
                        );
                    }
                    let count = self.count()?;
                    let now = Instant::now();
                    let activity = self.activity(now)?;
                    let next = self.drain.on_count(count, activity, now);
                    actions.extend(self.carry_out(next)?);
                }
                Step::Release { reason, trigger } => {
                    self.kernel.stay_attached()?;
                    self.report_release(reason)?;
                    actions.push(Action::Release { reason, trigger });
                }
                Step::Resume => {
                    self.kernel.resume()?;
                    self.progress.systemd().stop_extending();
                    self.window = None;
                    self.idleness = None;
                    let live = self.count()?.live;
                    info!(
                        live,
                        "resumed: accepting new connections again; {live} live"
                    );
                    self.progress
                        .systemd()
                        .status(&format!("serving: {live} live"));
                }
                Step::Forward(signal) => actions.push(Action::Forward(signal)),
                Step::Kill => actions.push(Action::Kill),
            }
        }
        self.changes.send_modify(|n| *n += 1);
        Ok(actions)
    }

    fn start_draining(&mut self) -> Result<()> {
        // Attach and sweep first, read after: a close in between then either shows in the count
        // or arrives as an event. A drain without an accept window refuses from this instant
        // too, before anything else is attached.
        let refuse = matches!(self.phase(), Phase::Draining { refusing: true, .. });
        self.kernel.start_draining(refuse)?;
        let counts = self.counts()?;
        let now = Instant::now();
        self.live_at_start = Some(counts.total().live);
        self.drains_started += 1;
        self.idleness = None;
        let Phase::Draining {
            deadline, settings, ..
        } = self.phase()
        else {
            return Ok(());
        };
        self.settings = Some(settings);
        self.window = (!settings.accept_for.is_zero()).then_some(AcceptWindow {
            opened_at_start: counts.opened(),
            opened: counts.opened(),
            last_arrival: None,
        });
        self.progress
            .drain_started(&self.kernel, &counts, &settings, now);
        let left = deadline.saturating_duration_since(now);
        self.progress
            .systemd()
            .extend_timeout(left + self.after_release + SYSTEMD_MARGIN);
        Ok(())
    }

    fn report_release(&mut self, reason: ReleaseReason) -> Result<()> {
        let count = self.count()?;
        match reason {
            ReleaseReason::Drained => info!(
                live = count.live,
                "drained: no live connections; releasing the server"
            ),
            ReleaseReason::Idle => {
                let idle_for = self
                    .idleness
                    .as_ref()
                    .map_or(0.0, |i| i.idle_for.as_secs_f64());
                info!(
                    live = count.live,
                    "drained: the {} connection(s) left have all been idle for {idle_for:.1}s or \
                     more; releasing the server, which closes idle connections itself",
                    count.live
                )
            }
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
                progress::report_stragglers(&self.kernel, count, Whose::Serving, "drain");
                self.hint_release_when_idle()?;
            }
        }
        self.progress
            .systemd()
            .extend_timeout(self.after_release + SYSTEMD_MARGIN);
        Ok(())
    }

    /// At a deadline: if no connection still live carried data during the whole drain, idle
    /// connections alone held it, and `--release-when-idle` would have ended it earlier.
    fn hint_release_when_idle(&self) -> Result<()> {
        let Phase::Released { started, at, .. } = self.phase() else {
            return Ok(());
        };
        if self.settings.is_some_and(|s| s.release_when_idle.is_some()) {
            return Ok(());
        }
        let idleness = self.kernel.idleness(at - started, at, Whose::Serving)?;
        if idleness.idle > 0 && idleness.active.is_empty() {
            warn!(
                "the {} connection(s) that held this drain to its deadline carried no data during \
                 it: idle pooled connections (a load balancer's, say) alone held it; \
                 --release-when-idle DURATION releases once every connection left has been idle \
                 that long",
                idleness.idle
            );
        }
        Ok(())
    }

    /// The counts for a report: see [`ReportCounts`]. Counts from the counters cost little and
    /// are always read afresh.
    fn report_counts(&self) -> Result<Counts> {
        let change = *self.changes.borrow();
        let now = Instant::now();
        if let Some(last) = self.report_counts.borrow().as_ref()
            && last.change == change
            && now < last.read_at + last.reuse_for
        {
            return Ok(last.counts.clone());
        }
        let counts = self.counts()?;
        let took = now.elapsed();
        *self.report_counts.borrow_mut() = counts.from_socket_table.then(|| ReportCounts {
            change,
            read_at: now,
            reuse_for: took * REPORT_REUSE_PER_READ,
            counts: counts.clone(),
        });
        Ok(counts)
    }

    /// Serving, draining or released: no count needed.
    pub fn state(&self) -> State {
        self.phase().into()
    }

    /// The state now; with the most idle live connections when `with_connections`.
    pub fn status(&self, with_connections: bool) -> Result<Status> {
        let counts = self.report_counts()?;
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
        let (refusing, accept_window_left, release_when_idle) = match self.phase() {
            Phase::Draining {
                refuse_at,
                refusing,
                settings,
                ..
            } => (
                refusing,
                (!refusing).then(|| refuse_at.saturating_duration_since(now)),
                settings.release_when_idle,
            ),
            Phase::Released { .. } => (true, None, None),
            Phase::Serving => (false, None, None),
        };
        let idleness = self
            .idleness
            .as_ref()
            .filter(|_| release_when_idle.is_some());
        let most_idle = if with_connections {
            self.kernel
                .most_idle(STATUS_MOST_IDLE, Whose::Serving)?
                .iter()
                .map(idle_connection)
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
            refusing,
            accept_window_left_seconds: accept_window_left.map(|d| d.as_secs_f64()),
            release_when_idle_seconds: release_when_idle.map(|d| d.as_secs_f64()),
            idle_live: idleness.map(|i| i.idle as i64),
            active: idleness
                .map(|i| i.active.iter().map(idle_connection).collect())
                .unwrap_or_default(),
            drains_started: self.drains_started,
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

fn idle_connection(socket: &TableSocket) -> IdleConnection {
    IdleConnection {
        port: socket.local_port,
        peer: socket.peer.to_string(),
        idle_seconds: socket.idle.map(|a| a.as_secs_f64()),
    }
}

fn outcome(reason: ReleaseReason) -> Outcome {
    match reason {
        ReleaseReason::Drained => Outcome::Drained,
        ReleaseReason::Idle => Outcome::DrainedToIdle,
        ReleaseReason::DeadlinePassed => Outcome::DeadlinePassed,
        ReleaseReason::SecondSignal | ReleaseReason::Forced => Outcome::ReleasedEarly,
    }
}
