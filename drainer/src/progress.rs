//! Drain progress in the log and in systemd's STATUS=: the count at drain start, each change at
//! most once a second with the most idle live connections, and the stragglers when the deadline cuts
//! the drain.
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::{
    drain::Count,
    programs::{PortCount, Programs},
    sock_diag::{DiagSocket, SockDiag},
    systemd::Systemd,
};

/// Progress lines are at most this frequent.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How many of the most idle connections a progress line names.
const MOST_IDLE_SHOWN: usize = 5;
/// How many stragglers the deadline report names.
const STRAGGLERS_SHOWN: usize = 100;

pub struct Progress {
    diag: SockDiag,
    systemd: Systemd,
    last_logged: Option<Instant>,
    last_live: Option<i64>,
    /// The count changed since the last line; log it at `next_line_at`.
    pending: bool,
    warned_inexact: bool,
}

impl Progress {
    pub fn new(diag: SockDiag, systemd: Systemd) -> Self {
        Self {
            diag,
            systemd,
            last_logged: None,
            last_live: None,
            pending: false,
            warned_inexact: false,
        }
    }

    pub fn drain_started(
        &mut self,
        programs: &Programs,
        counts: &[PortCount],
        count: Count,
        now: Instant,
    ) {
        let per_port = counts
            .iter()
            .map(|c| format!("port {}: {}", c.port, c.live))
            .collect::<Vec<_>>()
            .join(", ");
        info!(
            live = count.live,
            "draining: refusing new connections; {} live ({per_port})", count.live
        );
        self.warn_if_inexact(count);
        self.log_line(programs, count.live, now);
    }

    /// A new count was read; logs it now or schedules it.
    pub fn count_changed(&mut self, programs: &Programs, count: Count, now: Instant) {
        self.warn_if_inexact(count);
        if self.last_live == Some(count.live) {
            return;
        }
        match self.next_line_at() {
            Some(at) if now < at => self.pending = true,
            _ => self.log_line(programs, count.live, now),
        }
    }

    /// When a scheduled line is due, if one is.
    pub fn next_line_at(&self) -> Option<Instant> {
        let last = self.last_logged?;
        self.pending.then_some(last + MIN_INTERVAL)
    }

    pub fn log_pending(&mut self, programs: &Programs, count: Count, now: Instant) {
        if self.pending {
            self.log_line(programs, count.live, now);
        }
    }

    pub fn systemd(&self) -> &Systemd {
        &self.systemd
    }

    fn log_line(&mut self, programs: &Programs, live: i64, now: Instant) {
        self.pending = false;
        self.last_logged = Some(now);
        self.last_live = Some(live);
        self.systemd.status(&format!("draining: {live} live"));
        if live <= 0 {
            return;
        }
        match self.most_idle(programs, MOST_IDLE_SHOWN) {
            Ok(listed) => info!(live, "{live} live; most idle: {}", list(&listed)),
            Err(err) => info!(live, "{live} live (cannot list them: {err:#})"),
        }
    }

    /// The deadline cut the drain: name who was still connected.
    pub fn report_stragglers(&mut self, programs: &Programs, count: Count) {
        match self.most_idle(programs, STRAGGLERS_SHOWN) {
            Ok(stragglers) => warn!(
                live = count.live,
                "drain deadline passed with {} connections live: {}{}",
                count.live,
                list(&stragglers),
                if count.live > stragglers.len() as i64 {
                    ", …"
                } else {
                    ""
                }
            ),
            Err(err) => warn!(
                live = count.live,
                "drain deadline passed with {} live (cannot list them: {err:#})", count.live
            ),
        }
    }

    pub fn diag(&self) -> &SockDiag {
        &self.diag
    }

    fn most_idle(&self, programs: &Programs, limit: usize) -> anyhow::Result<Vec<DiagSocket>> {
        self.diag.most_idle(programs.ports(), limit)
    }

    fn warn_if_inexact(&mut self, count: Count) {
        if !count.exact && !self.warned_inexact {
            self.warned_inexact = true;
            warn!(
                "a connection could not be recorded (a full map): the count is unknown, and the \
                 drain will run to its deadline"
            );
        }
    }
}

/// `a, b, c` for a log line.
fn list(connections: &[DiagSocket]) -> String {
    connections
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
