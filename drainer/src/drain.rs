//! The drain policy: serving → draining → released, as a pure state machine.
//!
//! It decides, it does not act: each input returns the [`Step`]s the caller must carry out.
//! Time is passed in, so the policy is tested without a kernel, a child or a clock.
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

/// The connection count as the kernel side reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count {
    pub live: i64,
    /// False when a connection could not be recorded (the map was full): `live` is then a lower
    /// bound and a zero proves nothing.
    pub exact: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseReason {
    /// The live count reached zero.
    Drained,
    /// `--drain-timeout` passed with connections still live.
    DeadlinePassed,
    /// A second stop signal arrived while draining.
    SecondSignal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Serving,
    Draining {
        started: Instant,
        deadline: Instant,
        stop_signal: Signal,
    },
    Released {
        at: Instant,
        reason: ReleaseReason,
        stop_signal: Signal,
    },
}

/// What the caller must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Refuse new connections from now on.
    StartRefusing,
    /// Let the server shut down: send it `signal`.
    Release {
        signal: Signal,
        reason: ReleaseReason,
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
    kill_after: Duration,
    killed: bool,
}

impl Drain {
    pub fn new(drain_timeout: Duration, kill_after: Duration) -> Self {
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
            Phase::Serving => {
                self.phase = Phase::Draining {
                    started: now,
                    deadline: now + self.drain_timeout,
                    stop_signal: signal,
                };
                Step::StartRefusing
            }
            Phase::Draining { stop_signal, .. } => {
                self.release(ReleaseReason::SecondSignal, stop_signal, now)
            }
            Phase::Released { .. } => Step::Forward(signal),
        }
    }

    /// The live count changed (or was re-read).
    pub fn on_count(&mut self, count: Count, now: Instant) -> Option<Step> {
        match self.phase {
            Phase::Draining { stop_signal, .. } if count.exact && count.live <= 0 => {
                Some(self.release(ReleaseReason::Drained, stop_signal, now))
            }
            _ => None,
        }
    }

    /// When [`Drain::on_timer`] must next be called, if ever.
    pub fn next_timer(&self) -> Option<Instant> {
        match self.phase {
            Phase::Serving => None,
            Phase::Draining { deadline, .. } => Some(deadline),
            Phase::Released { .. } if self.killed => None,
            Phase::Released { at, .. } => Some(at + self.kill_after),
        }
    }

    /// The time [`Drain::next_timer`] named has come (or passed).
    pub fn on_timer(&mut self, now: Instant) -> Option<Step> {
        match self.phase {
            Phase::Draining {
                deadline,
                stop_signal,
                ..
            } if now >= deadline => {
                Some(self.release(ReleaseReason::DeadlinePassed, stop_signal, now))
            }
            Phase::Released { at, .. } if !self.killed && now >= at + self.kill_after => {
                self.killed = true;
                Some(Step::Kill)
            }
            _ => None,
        }
    }

    fn release(&mut self, reason: ReleaseReason, signal: Signal, now: Instant) -> Step {
        self.phase = Phase::Released {
            at: now,
            reason,
            stop_signal: signal,
        };
        Step::Release { signal, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(300);
    const KILL_AFTER: Duration = Duration::from_secs(30);

    fn exact(live: i64) -> Count {
        Count { live, exact: true }
    }

    fn draining(t0: Instant, live: i64) -> Drain {
        let mut drain = Drain::new(TIMEOUT, KILL_AFTER);
        assert_eq!(
            drain.on_stop_signal(Signal::SIGTERM, t0),
            Step::StartRefusing
        );
        assert_eq!(drain.on_count(exact(live), t0), None);
        drain
    }

    #[test]
    fn serving_ignores_counts_and_has_no_timer() {
        let mut drain = Drain::new(TIMEOUT, KILL_AFTER);
        assert_eq!(drain.on_count(exact(0), Instant::now()), None);
        assert_eq!(drain.next_timer(), None);
        assert_eq!(drain.phase(), Phase::Serving);
    }

    #[test]
    fn stop_signal_with_nothing_live_releases_at_once() {
        let mut drain = Drain::new(TIMEOUT, KILL_AFTER);
        let now = Instant::now();
        assert_eq!(
            drain.on_stop_signal(Signal::SIGTERM, now),
            Step::StartRefusing
        );
        assert_eq!(
            drain.on_count(exact(0), now),
            Some(Step::Release {
                signal: Signal::SIGTERM,
                reason: ReleaseReason::Drained
            })
        );
    }

    #[test]
    fn releases_when_the_count_reaches_zero_with_the_signal_that_started_the_drain() {
        let t0 = Instant::now();
        let mut drain = Drain::new(TIMEOUT, KILL_AFTER);
        drain.on_stop_signal(Signal::SIGINT, t0);
        assert_eq!(drain.on_count(exact(3), t0), None);
        assert_eq!(drain.on_count(exact(2), t0), None);
        assert_eq!(drain.on_count(exact(1), t0), None);
        assert_eq!(
            drain.on_count(exact(0), t0 + Duration::from_secs(1)),
            Some(Step::Release {
                signal: Signal::SIGINT,
                reason: ReleaseReason::Drained
            })
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
            Some(Step::Release {
                signal: Signal::SIGTERM,
                reason: ReleaseReason::DeadlinePassed
            })
        );
    }

    #[test]
    fn second_stop_signal_releases_at_once_and_a_third_is_forwarded() {
        let t0 = Instant::now();
        let mut drain = draining(t0, 5);
        assert_eq!(
            drain.on_stop_signal(Signal::SIGINT, t0),
            Step::Release {
                signal: Signal::SIGTERM,
                reason: ReleaseReason::SecondSignal
            }
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
        let released = t0 + Duration::from_secs(2);
        drain.on_count(exact(0), released);
        assert_eq!(drain.next_timer(), Some(released + KILL_AFTER));
        assert_eq!(
            drain.on_timer(released + KILL_AFTER - Duration::from_millis(1)),
            None
        );
        assert_eq!(drain.on_timer(released + KILL_AFTER), Some(Step::Kill));
        assert_eq!(drain.next_timer(), None);
        assert_eq!(drain.on_timer(released + KILL_AFTER * 2), None);
    }
}
