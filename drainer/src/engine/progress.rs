//! Drain progress in the log and in systemd's STATUS=: the count at drain start, each change at
//! most once a second with the most idle live connections, and the stragglers when the deadline cuts
//! the drain.
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::policy::DrainSettings;
use crate::{
    kernel::{Count, Counts, Idleness, Kernel, TableSocket, Whose},
    system::systemd::Systemd,
};

/// Progress lines are at most this frequent.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How many of the most idle connections a progress line names.
const MOST_IDLE_SHOWN: usize = 5;
/// How many stragglers the deadline report names.
const STRAGGLERS_SHOWN: usize = 100;

pub(super) struct Progress {
    systemd: Systemd,
    last_logged: Option<Instant>,
    last_live: Option<i64>,
    /// How many were idle at the last line, when the drain releases on idleness.
    last_idle: Option<usize>,
    /// The count changed since the last line; log it at `next_line_at`.
    pending: bool,
    warned_untracked: bool,
    warned_outbound: bool,
    warned_missed: bool,
}

impl Progress {
    pub(super) fn new(systemd: Systemd) -> Self {
        Self {
            systemd,
            last_logged: None,
            last_live: None,
            last_idle: None,
            pending: false,
            warned_untracked: false,
            warned_outbound: false,
            warned_missed: false,
        }
    }

    pub(super) fn drain_started(
        &mut self,
        kernel: &Kernel,
        counts: &Counts,
        settings: &DrainSettings,
        now: Instant,
    ) {
        let count = counts.total();
        let per_port = counts
            .ports
            .iter()
            .map(|c| format!("port {}: {}", c.port, c.live))
            .collect::<Vec<_>>()
            .join(", ");
        let refusal = if settings.accept_for.is_zero() {
            "refusing new connections".to_owned()
        } else {
            format!(
                "readiness fails now; new connections are accepted for {:.1}s more, then refused",
                settings.accept_for.as_secs_f64()
            )
        };
        let idle = settings.release_when_idle.map_or(String::new(), |idle| {
            format!(
                "; releasing once every connection left has been idle for {:.1}s",
                idle.as_secs_f64()
            )
        });
        info!(
            live = count.live,
            "draining: {refusal}{idle}; {} ({per_port})",
            live_words(count)
        );
        self.warn_if_untrusted(counts);
        self.log_line(kernel, count, None, now);
    }

    /// The accept window is over: how many connections arrived in it and when the last came, so
    /// the window can be sized to how long the endpoint update really takes.
    pub(super) fn accept_window_closed(
        &mut self,
        arrivals: u64,
        last_arrival: Option<Instant>,
        now: Instant,
    ) {
        match last_arrival {
            Some(at) => info!(
                arrivals,
                "accept window over: {arrivals} new connection(s) arrived in it, the last \
                 {:.2}s before its end; refusing new connections now",
                now.saturating_duration_since(at).as_secs_f64()
            ),
            None => info!(
                arrivals,
                "accept window over: no new connection arrived in it; refusing new connections now"
            ),
        }
    }

    /// A new count was read; logs it now or schedules it.
    pub(super) fn count_changed(
        &mut self,
        kernel: &Kernel,
        count: Count,
        idleness: Option<&Idleness>,
        now: Instant,
    ) {
        let idle = idleness.map(|i| i.idle);
        if self.last_live == Some(count.live) && self.last_idle == idle {
            return;
        }
        match self.next_line_at() {
            Some(at) if now < at => self.pending = true,
            _ => self.log_line(kernel, count, idleness, now),
        }
    }

    /// When a scheduled line is due, if one is.
    pub(super) fn next_line_at(&self) -> Option<Instant> {
        let last = self.last_logged?;
        self.pending.then_some(last + MIN_INTERVAL)
    }

    pub(super) fn log_pending(
        &mut self,
        kernel: &Kernel,
        count: Count,
        idleness: Option<&Idleness>,
        now: Instant,
    ) {
        if self.pending {
            self.log_line(kernel, count, idleness, now);
        }
    }

    pub(super) fn systemd(&self) -> &Systemd {
        &self.systemd
    }

    fn log_line(
        &mut self,
        kernel: &Kernel,
        count: Count,
        idleness: Option<&Idleness>,
        now: Instant,
    ) {
        let live = count.live;
        self.pending = false;
        self.last_logged = Some(now);
        self.last_live = Some(live);
        self.last_idle = idleness.map(|i| i.idle);
        let counted = live_words(count);
        if let Some(idleness) = idleness {
            let idle = idleness.idle;
            self.systemd
                .status(&format!("draining: {counted}, {idle} idle"));
            info!(
                live,
                idle,
                "{counted}, {idle} idle for {:.1}s or more; still active: {}{}",
                idleness.idle_for.as_secs_f64(),
                list(&idleness.active),
                if idleness.active_count > idleness.active.len() {
                    ", …"
                } else {
                    ""
                }
            );
            return;
        }
        self.systemd.status(&format!("draining: {counted}"));
        if live <= 0 && count.exact {
            return;
        }
        match kernel.most_idle(MOST_IDLE_SHOWN, Whose::Serving) {
            Ok(listed) if listed.is_empty() => info!(live, "{counted}"),
            Ok(listed) => info!(live, "{counted}; most idle: {}", list(&listed)),
            Err(err) => info!(live, "{counted} (cannot list them: {err:#})"),
        }
    }

    /// Says once, when it happens, that the counters can no longer be trusted, and what
    /// replaces them.
    pub(super) fn warn_if_untrusted(&mut self, counts: &Counts) {
        let untracked = counts.untracked();
        if untracked > 0 && !self.warned_untracked {
            self.warned_untracked = true;
            warn!(
                "the live count is unknown from now on: {untracked} connection(s) could not be \
                 recorded (a BPF map is full); a drain will run to its deadline"
            );
        }
        if counts.missed_state_changes > 0 && untracked == 0 && !self.warned_missed {
            self.warned_missed = true;
            warn!(
                "the kernel skipped drainer's tracepoint for {} TCP state change(s), so the \
                 counters can no longer be trusted: counting live connections from the socket \
                 table from now on (connections made from a guarded port by the server's own \
                 user count too)",
                counts.missed_state_changes
            );
        }
        if counts.outbound_unrecorded > 0 && untracked == 0 && !self.warned_outbound {
            self.warned_outbound = true;
            warn!(
                "{} outbound connection(s) from a guarded port could not be recorded (drainer's \
                 table of them is full), so the counters can no longer be trusted: counting live \
                 connections from the socket table from now on, where those another user made \
                 do not count",
                counts.outbound_unrecorded
            );
        }
    }
}

/// The deadline cut a drain: names who was still connected. `whose` connections were drained,
/// `drain` names that drain in the log.
pub fn report_stragglers(kernel: &Kernel, count: Count, whose: Whose, drain: &str) {
    match kernel.most_idle(STRAGGLERS_SHOWN, whose) {
        Ok(stragglers) if stragglers.is_empty() => warn!(
            live = count.live,
            "{drain} deadline passed with {}",
            connections_live(count)
        ),
        Ok(stragglers) => warn!(
            live = count.live,
            "{drain} deadline passed with {}: {}{}",
            connections_live(count),
            list(&stragglers),
            if count.live > stragglers.len() as i64 {
                ", …"
            } else {
                ""
            }
        ),
        Err(err) => warn!(
            live = count.live,
            "{drain} deadline passed with {} (cannot list them: {err:#})",
            connections_live(count)
        ),
    }
}

/// `3 live`, or that the count is unknown.
fn live_words(count: Count) -> String {
    if count.exact {
        format!("{} live", count.live)
    } else {
        format!("live count unknown ({} counted)", count.live)
    }
}

/// `3 connections live`, or that the count is unknown.
fn connections_live(count: Count) -> String {
    if count.exact {
        format!("{} connections live", count.live)
    } else {
        format!("the live count unknown ({} counted)", count.live)
    }
}

/// `a, b, c` for a log line.
fn list(connections: &[TableSocket]) -> String {
    connections
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
