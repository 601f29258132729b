//! The drain policy: serving → draining → released (and back to serving when a drain started by
//! request is resumed), as a pure state machine.
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
    /// Every live connection left had been idle for the drain's `release_when_idle`.
    Idle,
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

/// How one drain runs: the configured values, or a request's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainSettings {
    /// From the drain's start to release whatever the count.
    pub timeout: Duration,
    /// From the drain's start, new connections are still accepted (and counted) for this long;
    /// refusal starts after it, and release does not come before.
    pub accept_for: Duration,
    /// Release once every live connection has been idle this long; `None`: only at zero.
    pub release_when_idle: Option<Duration>,
}

impl DrainSettings {
    /// A drain must leave itself time after its accept window.
    pub fn check(&self) -> Result<(), String> {
        if self.accept_for >= self.timeout {
            return Err(format!(
                "an accept window of {:.1}s leaves no time to drain before the {:.1}s deadline: \
                 make the accept window shorter than the deadline",
                self.accept_for.as_secs_f64(),
                self.timeout.as_secs_f64()
            ));
        }
        Ok(())
    }
}

/// What the caller knows of the live connections' activity, for [`Drain::on_count`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    /// Not looked at: the drain does not release on idleness, or refusal has not started.
    Unknown,
    /// Every live connection has been idle for the drain's `release_when_idle`.
    AllIdle,
    /// Some connection still carries data.
    Busy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Serving,
    Draining {
        started: Instant,
        deadline: Instant,
        /// When refusal starts (the end of the accept window); it has once `refusing`.
        refuse_at: Instant,
        refusing: bool,
        trigger: Trigger,
        settings: DrainSettings,
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
    /// The drain has started: readiness fails and count changes are announced from now on.
    StartDraining,
    /// Refuse new connections from now on.
    StartRefusing,
    /// Let the server shut down.
    Release {
        reason: ReleaseReason,
        trigger: Trigger,
    },
    /// Back to serving: stop refusing, readiness returns.
    Resume,
    /// Pass a signal through to the server unchanged.
    Forward(Signal),
    /// The server outlived `--kill-after`: SIGKILL its process group.
    Kill,
}

/// Why a drain cannot be resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CannotResume {
    /// There is no drain to resume.
    Serving,
    /// A stop signal started it: drainer's own stop was asked for.
    StartedBySignal(Signal),
}

impl std::fmt::Display for CannotResume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Serving => write!(f, "not draining: there is no drain to resume"),
            Self::StartedBySignal(signal) => write!(
                f,
                "this drain was started by {signal}, which asks drainer itself to stop: it cannot \
                 be resumed (only a drain started by `drainer drain` or HTTP /drain can)"
            ),
        }
    }
}

#[derive(Debug)]
pub struct Drain {
    phase: Phase,
    /// For a drain whose request names none of its own.
    defaults: DrainSettings,
    /// `None` when drainer does not own the server's process (daemon mode).
    kill_after: Option<Duration>,
    killed: bool,
}

impl Drain {
    pub fn new(defaults: DrainSettings, kill_after: Option<Duration>) -> Self {
        Self {
            phase: Phase::Serving,
            defaults,
            kill_after,
            killed: false,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn defaults(&self) -> DrainSettings {
        self.defaults
    }

    /// SIGTERM or SIGINT reached drainer. After [`Step::StartDraining`] (and
    /// [`Step::StartRefusing`]) the caller reads the count and passes it to [`Drain::on_count`]:
    /// read any earlier, a close in between would be missed.
    pub fn on_stop_signal(&mut self, signal: Signal, now: Instant) -> Vec<Step> {
        match self.phase {
            Phase::Serving => self.start(Trigger::Signal(signal), self.defaults, now),
            Phase::Draining { .. } => vec![self.release(ReleaseReason::SecondSignal, now)],
            Phase::Released { .. } => vec![Step::Forward(signal)],
        }
    }

    /// A drain request, with its own settings. Joins a drain under way (keeping its settings);
    /// changes nothing once released.
    pub fn on_drain_request(&mut self, settings: DrainSettings, now: Instant) -> Vec<Step> {
        match self.phase {
            Phase::Serving => self.start(Trigger::Request, settings, now),
            Phase::Draining { .. } | Phase::Released { .. } => Vec::new(),
        }
    }

    /// Release now, whatever the count (`drainer release`); starts the drain first if needed.
    pub fn on_force_release(&mut self, now: Instant) -> Vec<Step> {
        match self.phase {
            Phase::Serving => {
                let mut steps = self.start(Trigger::Request, self.defaults, now);
                if !steps.contains(&Step::StartRefusing) {
                    steps.push(self.start_refusing());
                }
                steps.push(self.release(ReleaseReason::Forced, now));
                steps
            }
            Phase::Draining { refusing, .. } => {
                let mut steps = Vec::new();
                if !refusing {
                    steps.push(self.start_refusing());
                }
                steps.push(self.release(ReleaseReason::Forced, now));
                steps
            }
            Phase::Released { .. } => Vec::new(),
        }
    }

    /// Back to serving (`drainer resume`), from a drain a request started, released or not.
    pub fn on_resume(&mut self) -> Result<Step, CannotResume> {
        match self.phase {
            Phase::Serving => Err(CannotResume::Serving),
            Phase::Draining {
                trigger: Trigger::Signal(signal),
                ..
            }
            | Phase::Released {
                trigger: Trigger::Signal(signal),
                ..
            } => Err(CannotResume::StartedBySignal(signal)),
            Phase::Draining { .. } | Phase::Released { .. } => {
                self.phase = Phase::Serving;
                self.killed = false;
                Ok(Step::Resume)
            }
        }
    }

    /// The live count changed (or was re-read), with what is known of the connections' activity.
    /// Nothing is released while new connections are still accepted.
    pub fn on_count(&mut self, count: Count, activity: Activity, now: Instant) -> Option<Step> {
        let Phase::Draining {
            refusing: true,
            settings,
            ..
        } = self.phase
        else {
            return None;
        };
        if count.exact && count.live <= 0 {
            return Some(self.release(ReleaseReason::Drained, now));
        }
        if settings.release_when_idle.is_some() && activity == Activity::AllIdle {
            return Some(self.release(ReleaseReason::Idle, now));
        }
        None
    }

    /// When [`Drain::on_timer`] must next be called, if ever.
    pub fn next_timer(&self) -> Option<Instant> {
        match (self.phase, self.kill_after) {
            (
                Phase::Draining {
                    deadline,
                    refuse_at,
                    refusing,
                    ..
                },
                _,
            ) => Some(if refusing {
                deadline
            } else {
                refuse_at.min(deadline)
            }),
            (Phase::Released { at, .. }, Some(kill_after)) if !self.killed => Some(at + kill_after),
            _ => None,
        }
    }

    /// The time [`Drain::next_timer`] named has come (or passed). When refusal starts, the
    /// caller reads the count and passes it to [`Drain::on_count`], as at the drain's start.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Step> {
        match (self.phase, self.kill_after) {
            (
                Phase::Draining {
                    deadline, refusing, ..
                },
                _,
            ) if now >= deadline => {
                let mut steps = Vec::new();
                if !refusing {
                    steps.push(self.start_refusing());
                }
                steps.push(self.release(ReleaseReason::DeadlinePassed, now));
                steps
            }
            (
                Phase::Draining {
                    refuse_at,
                    refusing: false,
                    ..
                },
                _,
            ) if now >= refuse_at => vec![self.start_refusing()],
            (Phase::Released { at, .. }, Some(kill_after))
                if !self.killed && now >= at + kill_after =>
            {
                self.killed = true;
                vec![Step::Kill]
            }
            _ => Vec::new(),
        }
    }

    fn start(&mut self, trigger: Trigger, settings: DrainSettings, now: Instant) -> Vec<Step> {
        let refuse_at = now + settings.accept_for;
        self.phase = Phase::Draining {
            started: now,
            deadline: now + settings.timeout,
            refuse_at,
            refusing: false,
            trigger,
            settings,
        };
        let mut steps = vec![Step::StartDraining];
        if settings.accept_for.is_zero() {
            steps.push(self.start_refusing());
        }
        steps
    }

    fn start_refusing(&mut self) -> Step {
        if let Phase::Draining { refusing, .. } = &mut self.phase {
            *refusing = true;
        }
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
    const REFUSE_AT_ONCE: DrainSettings = DrainSettings {
        timeout: TIMEOUT,
        accept_for: Duration::ZERO,
        release_when_idle: None,
    };
    const START: [Step; 2] = [Step::StartDraining, Step::StartRefusing];

    fn exact(live: i64) -> Count {
        Count { live, exact: true }
    }

    fn count(drain: &mut Drain, live: i64, at: Instant) -> Option<Step> {
        drain.on_count(exact(live), Activity::Unknown, at)
    }

    fn supervising() -> Drain {
        Drain::new(REFUSE_AT_ONCE, Some(KILL_AFTER))
    }

    fn draining(t0: Instant, live: i64) -> Drain {
        let mut drain = supervising();
        assert_eq!(drain.on_stop_signal(Signal::SIGTERM, t0), START);
        assert_eq!(count(&mut drain, live, t0), None);
        drain
    }

    fn released(reason: ReleaseReason, trigger: Trigger) -> Option<Step> {
        Some(Step::Release { reason, trigger })
    }

    #[test]
    fn serving_ignores_counts_and_has_no_timer() {
        let mut drain = supervising();
        assert_eq!(count(&mut drain, 0, Instant::now()), None);
        assert_eq!(drain.next_timer(), None);
        assert_eq!(drain.phase(), Phase::Serving);
    }

    #[test]
    fn stop_signal_with_nothing_live_releases_at_once() {
        let mut drain = supervising();
        let now = Instant::now();
        assert_eq!(drain.on_stop_signal(Signal::SIGTERM, now), START);
        assert_eq!(
            count(&mut drain, 0, now),
            released(ReleaseReason::Drained, TERM)
        );
    }

    #[test]
    fn releases_when_the_count_reaches_zero_naming_the_signal_that_started_the_drain() {
        let t0 = Instant::now();
        let mut drain = supervising();
        drain.on_stop_signal(Signal::SIGINT, t0);
        for live in [3, 2, 1] {
            assert_eq!(count(&mut drain, live, t0), None);
        }
        assert_eq!(
            count(&mut drain, 0, t0 + Duration::from_secs(1)),
            released(ReleaseReason::Drained, Trigger::Signal(Signal::SIGINT))
        );
        assert_eq!(count(&mut drain, 0, t0), None, "released once");
    }

    #[test]
    fn deadline_releases_with_connections_still_live() {
        let t0 = Instant::now();
        let mut drain = draining(t0, 5);
        assert_eq!(drain.next_timer(), Some(t0 + TIMEOUT));
        assert!(
            drain
                .on_timer(t0 + TIMEOUT - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(
            drain.on_timer(t0 + TIMEOUT).first().copied(),
            released(ReleaseReason::DeadlinePassed, TERM)
        );
    }

    #[test]
    fn second_stop_signal_releases_at_once_and_a_third_is_forwarded() {
        let t0 = Instant::now();
        let mut drain = draining(t0, 5);
        assert_eq!(
            drain.on_stop_signal(Signal::SIGINT, t0).first().copied(),
            released(ReleaseReason::SecondSignal, TERM)
        );
        assert_eq!(
            drain.on_stop_signal(Signal::SIGINT, t0),
            [Step::Forward(Signal::SIGINT)]
        );
    }

    #[test]
    fn an_inexact_zero_holds_the_drain_to_the_deadline() {
        let t0 = Instant::now();
        let mut drain = draining(t0, 5);
        let unknown = Count {
            live: 0,
            exact: false,
        };
        assert_eq!(drain.on_count(unknown, Activity::Unknown, t0), None);
        assert!(matches!(drain.phase(), Phase::Draining { .. }));
    }

    #[test]
    fn kill_follows_release_after_kill_after_once() {
        let t0 = Instant::now();
        let mut drain = draining(t0, 1);
        let at = t0 + Duration::from_secs(2);
        count(&mut drain, 0, at);
        assert_eq!(drain.next_timer(), Some(at + KILL_AFTER));
        assert!(
            drain
                .on_timer(at + KILL_AFTER - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(drain.on_timer(at + KILL_AFTER), [Step::Kill]);
        assert_eq!(drain.next_timer(), None);
        assert!(drain.on_timer(at + KILL_AFTER * 2).is_empty());
    }

    #[test]
    fn a_request_starts_a_drain_with_its_own_deadline_and_a_second_request_joins_it() {
        let t0 = Instant::now();
        let mut drain = Drain::new(REFUSE_AT_ONCE, None);
        let five = DrainSettings {
            timeout: Duration::from_secs(5),
            ..REFUSE_AT_ONCE
        };
        assert_eq!(drain.on_drain_request(five, t0), START);
        assert_eq!(drain.next_timer(), Some(t0 + five.timeout));
        let one = DrainSettings {
            timeout: Duration::from_secs(1),
            ..REFUSE_AT_ONCE
        };
        assert!(drain.on_drain_request(one, t0).is_empty());
        assert_eq!(
            drain.next_timer(),
            Some(t0 + five.timeout),
            "the first deadline stands"
        );
        assert_eq!(
            count(&mut drain, 0, t0),
            released(ReleaseReason::Drained, Trigger::Request)
        );
        assert_eq!(drain.next_timer(), None, "no kill timer without a child");
    }

    #[test]
    fn force_release_while_serving_starts_and_releases() {
        let t0 = Instant::now();
        let mut drain = Drain::new(REFUSE_AT_ONCE, None);
        assert_eq!(
            drain.on_force_release(t0),
            vec![
                Step::StartDraining,
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

    #[test]
    fn the_accept_window_holds_refusal_and_release_back_even_at_zero() {
        let t0 = Instant::now();
        let window = Duration::from_secs(2);
        let mut drain = Drain::new(
            DrainSettings {
                accept_for: window,
                ..REFUSE_AT_ONCE
            },
            None,
        );
        assert_eq!(
            drain.on_stop_signal(Signal::SIGTERM, t0),
            [Step::StartDraining]
        );
        assert_eq!(count(&mut drain, 0, t0), None, "not before the window ends");
        assert_eq!(drain.next_timer(), Some(t0 + window));
        assert!(drain.on_timer(t0 + window / 2).is_empty());
        assert_eq!(drain.on_timer(t0 + window), [Step::StartRefusing]);
        assert_eq!(drain.next_timer(), Some(t0 + TIMEOUT));
        assert_eq!(
            count(&mut drain, 0, t0 + window),
            released(ReleaseReason::Drained, TERM)
        );
    }

    #[test]
    fn settings_whose_accept_window_reaches_the_deadline_are_refused() {
        assert_eq!(REFUSE_AT_ONCE.check(), Ok(()));
        let late = DrainSettings {
            timeout: Duration::from_secs(2),
            accept_for: Duration::from_secs(10),
            release_when_idle: None,
        };
        assert!(
            late.check()
                .unwrap_err()
                .contains("shorter than the deadline")
        );
    }

    #[test]
    fn a_deadline_inside_the_accept_window_refuses_and_releases() {
        let t0 = Instant::now();
        let short = DrainSettings {
            timeout: Duration::from_secs(1),
            accept_for: Duration::from_secs(5),
            release_when_idle: None,
        };
        let mut drain = Drain::new(short, None);
        drain.on_drain_request(short, t0);
        assert_eq!(drain.next_timer(), Some(t0 + short.timeout));
        assert_eq!(
            drain.on_timer(t0 + short.timeout),
            [
                Step::StartRefusing,
                Step::Release {
                    reason: ReleaseReason::DeadlinePassed,
                    trigger: Trigger::Request
                }
            ]
        );
    }

    #[test]
    fn idle_connections_release_only_when_asked_for() {
        let t0 = Instant::now();
        let mut plain = draining(t0, 3);
        assert_eq!(plain.on_count(exact(3), Activity::AllIdle, t0), None);

        let idle = DrainSettings {
            release_when_idle: Some(Duration::from_secs(3)),
            ..REFUSE_AT_ONCE
        };
        let mut drain = Drain::new(idle, Some(KILL_AFTER));
        drain.on_stop_signal(Signal::SIGTERM, t0);
        assert_eq!(drain.on_count(exact(3), Activity::Busy, t0), None);
        assert_eq!(
            drain.on_count(exact(3), Activity::AllIdle, t0),
            released(ReleaseReason::Idle, TERM)
        );
    }

    #[test]
    fn a_drain_a_request_started_can_be_resumed_released_or_not() {
        let t0 = Instant::now();
        let mut drain = Drain::new(REFUSE_AT_ONCE, None);
        assert_eq!(drain.on_resume(), Err(CannotResume::Serving));
        drain.on_drain_request(REFUSE_AT_ONCE, t0);
        assert_eq!(drain.on_resume(), Ok(Step::Resume));
        assert_eq!(drain.phase(), Phase::Serving);
        assert_eq!(drain.next_timer(), None);

        drain.on_drain_request(REFUSE_AT_ONCE, t0);
        count(&mut drain, 0, t0);
        assert!(matches!(drain.phase(), Phase::Released { .. }));
        assert_eq!(drain.on_resume(), Ok(Step::Resume));
        assert_eq!(
            drain.on_drain_request(REFUSE_AT_ONCE, t0),
            START,
            "drains again"
        );
    }

    #[test]
    fn a_drain_a_signal_started_cannot_be_resumed() {
        let t0 = Instant::now();
        let mut drain = draining(t0, 2);
        assert_eq!(
            drain.on_resume(),
            Err(CannotResume::StartedBySignal(Signal::SIGTERM))
        );
        assert!(matches!(drain.phase(), Phase::Draining { .. }));
    }
}
