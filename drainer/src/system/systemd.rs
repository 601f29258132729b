//! Telling systemd what drainer is doing (sd_notify), when it runs a `Type=notify` unit:
//! READY=1 once the programs are attached and existing connections counted; STATUS= with the live
//! count; EXTEND_TIMEOUT_USEC while draining, so `TimeoutStopSec=` does not kill a drain in
//! progress; STOPPING=1 when drainer releases the server and begins to exit.
//!
//! The stop timeout is extended in windows of [`EXTENSION_WINDOW`], renewed well before each one
//! ends, up to the time drainer means to wait: one message cannot say more than 71.6 minutes
//! (`u32` microseconds) while a drain may last days, and a drainer whose loop has stopped renews
//! nothing, so systemd stops waiting for it within a window.
use std::{
    cell::Cell,
    env,
    time::{Duration, Instant},
};

use sd_notify::NotifyState;
use tracing::warn;

/// How far one EXTEND_TIMEOUT_USEC message reaches.
const EXTENSION_WINDOW: Duration = Duration::from_secs(60);
/// How long before a window ends the next one is asked for.
const RENEW_BEFORE_END: Duration = Duration::from_secs(40);

pub struct Systemd {
    enabled: bool,
    extension: Cell<Option<Extension>>,
}

/// The stop timeout drainer is holding off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extension {
    /// Until when drainer means systemd to wait.
    until: Instant,
    /// When the window last asked for ends.
    window_end: Instant,
}

impl Extension {
    /// The window to ask for at `now`, and what is then extended.
    fn ask(until: Instant, now: Instant) -> (Duration, Self) {
        let window = until.saturating_duration_since(now).min(EXTENSION_WINDOW);
        (
            window,
            Self {
                until,
                window_end: now + window,
            },
        )
    }

    /// When to ask for the next window: never once the last one reaches `until`.
    fn renew_at(&self) -> Option<Instant> {
        (self.window_end < self.until).then(|| self.window_end - RENEW_BEFORE_END)
    }
}

impl Systemd {
    /// Active only under a service manager that set NOTIFY_SOCKET.
    pub fn from_env() -> Self {
        Self {
            enabled: env::var_os("NOTIFY_SOCKET").is_some(),
            extension: Cell::new(None),
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// Keeps the unit's current timeout (the stop timeout, while systemd is stopping it) from
    /// firing for `time` from now, renewing the extension at [`Systemd::renew_at`].
    pub fn extend_timeout(&self, time: Duration) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        self.ask(now + time, now);
    }

    /// When [`Systemd::renew`] is next due.
    pub fn renew_at(&self) -> Option<Instant> {
        self.extension.get()?.renew_at()
    }

    /// Asks for the next window of the extension, if one is due at `now`.
    pub fn renew(&self, now: Instant) {
        if let Some(extension) = self.extension.get()
            && extension.renew_at().is_some_and(|at| at <= now)
        {
            self.ask(extension.until, now);
        }
    }

    /// Nothing to hold off any more: a drain was resumed.
    pub fn stop_extending(&self) {
        self.extension.set(None);
    }

    fn ask(&self, until: Instant, now: Instant) {
        let (window, extension) = Extension::ask(until, now);
        self.extension.set(Some(extension));
        let usec = u32::try_from(window.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }

    /// A restart of the server began: the unit is reloading until the next [`Systemd::ready`].
    /// `Type=notify-reload` needs the monotonic time with it.
    pub fn reloading(&self, status: &str) {
        if !self.enabled {
            return;
        }
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now, NotifyState::Status(status)]),
            Err(err) => warn!("cannot read the monotonic clock for systemd: {err}"),
        }
    }

    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if self.enabled
            && let Err(err) = sd_notify::notify(states)
        {
            warn!("cannot notify systemd: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_extension_is_asked_for_window_by_window_until_it_is_reached() {
        let start = Instant::now();
        let until = start + Duration::from_secs(3 * 3600);
        let (window, mut extension) = Extension::ask(until, start);
        assert_eq!(window, EXTENSION_WINDOW);
        let mut now = start;
        let mut windows = 1;
        while let Some(at) = extension.renew_at() {
            assert!(
                at > now && at < extension.window_end,
                "renewed inside the window"
            );
            now = at;
            let (window, next) = Extension::ask(until, now);
            assert!(window <= EXTENSION_WINDOW);
            extension = next;
            windows += 1;
        }
        assert_eq!(extension.window_end, until);
        assert!(windows > 3 * 3600 / EXTENSION_WINDOW.as_secs());
    }

    #[test]
    fn a_short_extension_is_one_window() {
        let now = Instant::now();
        let (window, extension) = Extension::ask(now + Duration::from_secs(20), now);
        assert_eq!(window, Duration::from_secs(20));
        assert_eq!(extension.renew_at(), None);
    }
}
