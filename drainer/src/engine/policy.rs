//! The drain policy: serving → draining → released, as a pure state machine.
//!
//! It decides, it does not act: each input returns the [`Step`]s the caller must carry out.
//! Time is passed in, so the policy is tested without a kernel, a child or a clock.
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::kernel::Count;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseReason {
    /// The live count reached zero.
    Drained,
    /// The drain deadline passed with connections still live.
    DeadlinePassed,
    /// A second stop signal arrived while draining.
    SecondSignal,
    /// Somebody asked for release before the count reached zero (`drainer release`).
    Forced,
}

/// What started the drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// SIGTERM or SIGINT to drainer.
    Signal(Signal),
    /// A drain request (control socket or HTTP).
    Request,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Serving,
    Draining {
        started: Instant,
        deadline: Instant,
        trigger: Trigger,
    },
    Released {
        started: Instant,
        at: Instant,
        reason: ReleaseReason,
        trigger: Trigger,
    },
}

/// What the caller must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Refuse new connections from now on.
    StartRefusing,
    /// Let the server shut down.
    Release {
        reason: ReleaseReason,
        trigger: Trigger,
    },
    /// Pass a signal through to the server unchanged.
    Forward(Signal),
    /// The server outlived `--kill-after`: SIGKILL its process group.
    Kill,
}

#[derive(Debug)]
pub struct Drain {
    phase: Phase,
    drain_timeout: Duration,
    /// `None` when drainer does not own the server's process (daemon mode).
    kill_after: Option<Duration>,
    killed: bool,
}

impl Drain {
    pub fn new(drain_timeout: Duration, kill_after: Option<Duration>) -> Self {
        Self {
            phase: Phase::Serving,
            drain_timeout,
            kill_after,
            killed: false,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// SIGTERM or SIGINT reached drainer. After [`Step::StartRefusing`] the caller reads the count
    /// and passes it to [`Drain::on_count`]: read any earlier, a close in between would be missed.
    pub fn on_stop_signal(&mut self, signal: Signal, now: Instant) -> Step {
        match self.phase {
            Phase::Serving => self.start(Trigger::Signal(signal), self.drain_timeout, now),
            Phase::Draining { .. } => self.release(ReleaseReason::SecondSignal, now),
            Phase::Released { .. } => Step::Forward(signal),
        }
    }

    /// A drain request, with its own deadline or the configured one. Joins a drain under way
    /// (keeping its deadline); changes nothing once released.
    pub fn on_drain_request(&mut self, timeout: Option<Duration>, now: Instant) -> Option<Step> {
        match self.phase {
            Phase::Serving => {
                Some(self.start(Trigger::Request, timeout.unwrap_or(self.drain_timeout), now))
            }
            Phase::Draining { .. } | Phase::Released { .. } => None,
        }
    }

    /// Release now, whatever the count (`drainer release`); starts the drain first if needed.
    pub fn on_force_release(&mut self, now: Instant) -> Vec<Step> {
        match self.phase {
            Phase::Serving => {
                let start = self.start(Trigger::Request, self.drain_timeout, now);
                vec![start, self.release(ReleaseReason::Forced, now)]
            }
            Phase::Draining { .. } => vec![self.release(ReleaseReason::Forced, now)],
            Phase::Released { .. } => Vec::new(),
        }
    }

    /// The live count changed (or was re-read).
    pub fn on_count(&mut self, count: Count, now: Instant) -> Option<Step> {
        match self.phase {
            Phase::Draining { .. } if count.exact && count.live <= 0 => {
                Some(self.release(ReleaseReason::Drained, now))
            }
            _ => None,
        }
    }

    /// When [`Drain::on_timer`] must next be called, if ever.
    pub fn next_timer(&self) -> Option<Instant> {
        match (self.phase, self.kill_after) {
            (Phase::Draining { deadline, .. }, _) => Some(deadline),
            (Phase::Released { at, .. }, Some(kill_after)) if !self.killed => Some(at + kill_after),
            _ => None,
        }
    }

    /// The time [`Drain::next_timer`] named has come (or passed).
    pub fn on_timer(&mut self, now: Instant) -> Option<Step> {
        match (self.phase, self.kill_after) {
            (Phase::Draining { deadline, .. }, _) if now >= deadline => {
                Some(self.release(ReleaseReason::DeadlinePassed, now))
            }
            (Phase::Released { at, .. }, Some(kill_after))
                if !self.killed && now >= at + kill_after =>
            {
                self.killed = true;
                Some(Step::Kill)
            }
            _ => None,
        }
    }

    fn start(&mut self, trigger: Trigger, timeout: Duration, now: Instant) -> Step {
        self.phase = Phase::Draining {
            started: now,
            deadline: now + timeout,
            trigger,
        };
        Step::StartRefusing
    }

    fn release(&mut self, reason: ReleaseReason, now: Instant) -> Step {
        let (started, trigger) = match self.phase {
            Phase::Draining {
                started, trigger, ..
            }
            | Phase::Released {
                started, trigger, ..
            } => (started, trigger),
            Phase::Serving => (now, Trigger::Request),
        };
        self.phase = Phase::Released {
            started,
            at: now,
            reason,
            trigger,
        };
        Step::Release { reason, trigger }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(300);
    const KILL_AFTER: Duration = Duration::from_secs(30);
    const TERM: Trigger = Trigger::Signal(Signal::SIGTERM);

    fn exact(live: i64) -> Count {
        Count { live, exact: true }
    }

    fn supervising() -> Drain {
        Drain::new(TIMEOUT, Some(KILL_AFTER))
    }

    fn draining(t0: Instant, live: i64) -> Drain {
        let mut drain = supervising();
        assert_eq!(
            drain.on_stop_signal(Signal::SIGTERM, t0),
            Step::StartRefusing
        );
        assert_eq!(drain.on_count(exact(live), t0), None);
        drain
    }

    fn released(reason: ReleaseReason, trigger: Trigger) -> Option<Step> {
        Some(Step::Release { reason, trigger })
    }

    #[test]
    fn serving_ignores_counts_and_has_no_timer() {
        let mut drain = supervising();
        assert_eq!(drain.on_count(exact(0), Instant::now()), None);
        assert_eq!(drain.next_timer(), None);
        assert_eq!(drain.phase(), Phase::Serving);
    }

    #[test]
    fn stop_signal_with_nothing_live_releases_at_once() {
        let mut drain = supervising();
        let now = Instant::now();
        assert_eq!(
            drain.on_stop_signal(Signal::SIGTERM, now),
            Step::StartRefusing
        );
        assert_eq!(
            drain.on_count(exact(0), now),
            released(ReleaseReason::Drained, TERM)
        );
    }

    #[test]
    fn releases_when_the_count_reaches_zero_naming_the_signal_that_started_the_drain() {
        let t0 = Instant::now();
        let mut drain = supervising();
        drain.on_stop_signal(Signal::SIGINT, t0);
        for live in [3, 2, 1] {
            assert_eq!(drain.on_count(exact(live), t0), None);
        }
        assert_eq!(
            drain.on_count(exact(0), t0 + Duration::from_secs(1)),
            released(ReleaseReason::Drained, Trigger::Signal(Signal::SIGINT))
        );
        assert_eq!(drain.on_count(exact(0), t0), None, "released once");
    }

    #[test]
    fn deadline_releases_with_connections_still_live() {
        let t0 = Instant::now();
        let mut drain = draining(t0, 5);
        assert_eq!(drain.next_timer(), Some(t0 + TIMEOUT));
        assert_eq!(
            drain.on_timer(t0 + TIMEOUT - Duration::from_millis(1)),
            None
        );
        assert_eq!(
            drain.on_timer(t0 + TIMEOUT),
            released(ReleaseReason::DeadlinePassed, TERM)
        );
    }

    #[test]
    fn second_stop_signal_releases_at_once_and_a_third_is_forwarded() {
        let t0 = Instant::now();
        let mut drain = draining(t0, 5);
        assert_eq!(
            Some(drain.on_stop_signal(Signal::SIGINT, t0)),
            released(ReleaseReason::SecondSignal, TERM)
        );
        assert_eq!(
            drain.on_stop_signal(Signal::SIGINT, t0),
            Step::Forward(Signal::SIGINT)
        );
    }

    #[test]
    fn an_inexact_zero_holds_the_drain_to_the_deadline() {
        let t0 = Instant::now();
        let mut drain = draining(t0, 5);
        assert_eq!(
            drain.on_count(
                Count {
                    live: 0,
                    exact: false
                },
                t0
            ),
            None
        );
        assert!(matches!(drain.phase(), Phase::Draining { .. }));
    }

    #[test]
    fn kill_follows_release_after_kill_after_once() {
        let t0 = Instant::now();
        let mut drain = draining(t0, 1);
        let at = t0 + Duration::from_secs(2);
        drain.on_count(exact(0), at);
        assert_eq!(drain.next_timer(), Some(at + KILL_AFTER));
        assert_eq!(
            drain.on_timer(at + KILL_AFTER - Duration::from_millis(1)),
            None
        );
        assert_eq!(drain.on_timer(at + KILL_AFTER), Some(Step::Kill));
        assert_eq!(drain.next_timer(), None);
        assert_eq!(drain.on_timer(at + KILL_AFTER * 2), None);
    }

    #[test]
    fn a_request_starts_a_drain_with_its_own_deadline_and_a_second_request_joins_it() {
        let t0 = Instant::now();
        let mut drain = Drain::new(TIMEOUT, None);
        let five = Duration::from_secs(5);
        assert_eq!(
            drain.on_drain_request(Some(five), t0),
            Some(Step::StartRefusing)
        );
        assert_eq!(drain.next_timer(), Some(t0 + five));
        assert_eq!(
            drain.on_drain_request(Some(Duration::from_secs(1)), t0),
            None
        );
        assert_eq!(
            drain.next_timer(),
            Some(t0 + five),
            "the first deadline stands"
        );
        assert_eq!(
            drain.on_count(exact(0), t0),
            released(ReleaseReason::Drained, Trigger::Request)
        );
        assert_eq!(drain.next_timer(), None, "no kill timer without a child");
    }

    #[test]
    fn force_release_while_serving_starts_and_releases() {
        let t0 = Instant::now();
        let mut drain = Drain::new(TIMEOUT, None);
        assert_eq!(
            drain.on_force_release(t0),
            vec![
                Step::StartRefusing,
                Step::Release {
                    reason: ReleaseReason::Forced,
                    trigger: Trigger::Request
                }
            ]
        );
        assert!(drain.on_force_release(t0).is_empty());
        assert!(matches!(
            drain.phase(),
            Phase::Released {
                reason: ReleaseReason::Forced,
                ..
            }
        ));
    }
}
