//! Telling systemd what drainer is doing (sd_notify), when it runs a `Type=notify` unit:
//! READY=1 once the programs are attached and existing connections counted; STATUS= with the live
//! count; EXTEND_TIMEOUT_USEC while draining, so `TimeoutStopSec=` does not kill a drain in
//! progress; STOPPING=1 when drainer releases the server and begins to exit.
use std::{env, time::Duration};

use sd_notify::NotifyState;
use tracing::warn;

pub struct Systemd {
    enabled: bool,
}

impl Systemd {
    /// Active only under a service manager that set NOTIFY_SOCKET.
    pub fn from_env() -> Self {
        Self {
            enabled: env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// Keeps the unit's current timeout (the stop timeout, while systemd is stopping it) from
    /// firing for `time` from now.
    pub fn extend_timeout(&self, time: Duration) {
        let usec = u32::try_from(time.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
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
