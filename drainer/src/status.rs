//! What drainer reports about itself — to `drainer status`, drain waiters, /metrics and systemd —
//! as plain serializable records.
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Serving,
    Draining,
    Released,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Draining => "draining",
            Self::Released => "released",
        }
    }
}

/// Why the server was released; also the outcome a `drainer drain --wait` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The live count reached zero.
    Drained,
    /// The deadline passed with connections still live.
    DeadlinePassed,
    /// Released early: a second stop signal or `drainer release`.
    ReleasedEarly,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortStatus {
    pub port: u16,
    pub live: i64,
    pub refused: u64,
    pub untracked: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdleConnection {
    pub port: u16,
    pub peer: String,
    /// Seconds since data last went either way; `None` if the kernel did not say.
    pub idle_seconds: Option<f64>,
}

/// drainer's state at one instant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    /// Live connections over all guarded ports.
    pub live: i64,
    /// False once some connection could not be recorded (a full map): from then on `live` is
    /// unknown, too high or too low, and a drain runs to its deadline.
    pub count_exact: bool,
    pub live_at_drain_start: Option<i64>,
    /// Connections refused since drainer started.
    pub refused: u64,
    /// TCP state changes the kernel skipped drainer's tracepoint for (it was already running on
    /// that CPU). Once there is one, `live` is counted from the socket table.
    pub missed_state_changes: u64,
    /// Seconds since the drain started (to its release, once released).
    pub drain_elapsed_seconds: Option<f64>,
    /// Seconds until the drain deadline, while draining.
    pub deadline_left_seconds: Option<f64>,
    pub outcome: Option<Outcome>,
    /// How many drains the deadline has cut (0 or 1 per drainer process).
    pub deadline_hits: u64,
    pub ports: Vec<PortStatus>,
    /// The live connections idle the longest, most idle first (a few; filled for `status`
    /// requests only).
    #[serde(default)]
    pub most_idle: Vec<IdleConnection>,
}
