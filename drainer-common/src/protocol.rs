//! The control socket's protocol: one JSON request per connection — `status`, `drain`
//! (optionally waiting), `wait`, `release`, `resume` — answered by JSON lines, with the limits the daemon
//! reads requests under, and the status record every report is made of.
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest request line the daemon reads.
pub const MAX_REQUEST: usize = 4096;
/// How long the daemon waits for a request line.
pub const REQUEST_TIME: Duration = Duration::from_secs(5);
/// The longest duration a request may ask for (deadline, accept window, idle time).
const MAX_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

#[derive(Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    // Braced, so that unknown fields are refused for every command.
    Status {},
    Drain {
        #[serde(default)]
        wait: bool,
        /// This drain's deadline, if it starts it; the daemon's `--drain-timeout` otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_seconds: Option<f64>,
        /// How long this drain still accepts new connections; the daemon's `--accept-for`
        /// otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        accept_for_seconds: Option<f64>,
        /// Release once every connection left has been idle this long; the daemon's
        /// `--release-when-idle` otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        release_when_idle_seconds: Option<f64>,
    },
    Wait {},
    Release {},
    /// End a drain a request started, and serve again.
    Resume {},
}

#[derive(Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    Status(Status),
    Progress(Status),
    Released(Status),
    /// The drain being waited for was resumed before release.
    Resumed(Status),
    Error {
        message: String,
    },
}

/// Parses one request line.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|_| {
        "request is not UTF-8; send one JSON line such as {\"command\":\"status\"}".to_owned()
    })?;
    // serde would also take the tagged enum as an array; only objects are requests.
    if !text.trim_start().starts_with('{') {
        return Err(
            "a request is one JSON object per line, such as {\"command\":\"status\"}".to_owned(),
        );
    }
    let request: Request = serde_json::from_str(text.trim_end()).map_err(|err| {
        format!("bad request ({err}); send one JSON line such as {{\"command\":\"status\"}}")
    })?;
    if let Request::Drain {
        timeout_seconds,
        accept_for_seconds,
        release_when_idle_seconds,
        ..
    } = request
    {
        in_range("timeout_seconds", timeout_seconds, false)?;
        in_range("accept_for_seconds", accept_for_seconds, true)?;
        in_range(
            "release_when_idle_seconds",
            release_when_idle_seconds,
            false,
        )?;
    }
    Ok(request)
}

/// `field` is absent, or a duration in (0, [`MAX_SECONDS`]] — [0, …] when `zero_allowed`.
fn in_range(field: &str, seconds: Option<f64>, zero_allowed: bool) -> Result<(), String> {
    let Some(seconds) = seconds else {
        return Ok(());
    };
    let low_ok = if zero_allowed {
        seconds >= 0.0
    } else {
        seconds > 0.0
    };
    if low_ok && seconds <= MAX_SECONDS {
        return Ok(());
    }
    let open = if zero_allowed { '[' } else { '(' };
    Err(format!("{field} must be in {open}0, {MAX_SECONDS}]"))
}

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
    /// Every connection left had been idle for the drain's release-when-idle duration.
    DrainedToIdle,
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
    /// New connections are refused (false while serving and during a drain's accept window).
    #[serde(default)]
    pub refusing: bool,
    /// Seconds until refusal starts, during a drain's accept window.
    #[serde(default)]
    pub accept_window_left_seconds: Option<f64>,
    /// The idle duration this drain releases at, if it releases on idleness.
    #[serde(default)]
    pub release_when_idle_seconds: Option<f64>,
    /// Live connections idle for that long, while such a drain refuses.
    #[serde(default)]
    pub idle_live: Option<i64>,
    /// A few of the live connections that are not idle — those holding such a drain —, least
    /// idle first.
    #[serde(default)]
    pub active: Vec<IdleConnection>,
    /// Drains started since drainer started; a waiter tells its drain from a later one by it.
    #[serde(default)]
    pub drains_started: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_request() {
        assert_eq!(
            parse_request(b"{\"command\":\"status\"}\n"),
            Ok(Request::Status {})
        );
        assert_eq!(
            parse_request(b"{\"command\":\"drain\",\"wait\":true,\"timeout_seconds\":30}\n"),
            Ok(Request::Drain {
                wait: true,
                timeout_seconds: Some(30.0),
                accept_for_seconds: None,
                release_when_idle_seconds: None,
            })
        );
        assert_eq!(
            parse_request(b"{\"command\":\"drain\"}"),
            Ok(Request::Drain {
                wait: false,
                timeout_seconds: None,
                accept_for_seconds: None,
                release_when_idle_seconds: None,
            })
        );
        assert_eq!(
            parse_request(b"{\"command\":\"wait\"}"),
            Ok(Request::Wait {})
        );
        assert_eq!(
            parse_request(b"{\"command\":\"release\"}"),
            Ok(Request::Release {})
        );
        assert_eq!(
            parse_request(b"{\"command\":\"resume\"}"),
            Ok(Request::Resume {})
        );
        assert_eq!(
            parse_request(
                b"{\"command\":\"drain\",\"accept_for_seconds\":0,\"release_when_idle_seconds\":3}"
            ),
            Ok(Request::Drain {
                wait: false,
                timeout_seconds: None,
                accept_for_seconds: Some(0.0),
                release_when_idle_seconds: Some(3.0),
            })
        );
    }

    #[test]
    fn rejects_malformed_requests() {
        for bad in [
            &b""[..],
            b"status",
            b"{}",
            b"{\"command\":\"reboot\"}",
            b"{\"command\":\"status\",\"extra\":1}",
            b"{\"command\":\"drain\",\"wait\":\"yes\"}",
            b"{\"command\":\"drain\",\"timeout_seconds\":-1}",
            b"{\"command\":\"drain\",\"timeout_seconds\":1e300}",
            b"{\"command\":\"drain\",\"accept_for_seconds\":-1}",
            b"{\"command\":\"drain\",\"release_when_idle_seconds\":0}",
            b"{\"command\":\"resume\",\"now\":true}",
            b"[\"status\"]",
            b"\xff\xfe",
            b"{\"command\":\"status\"",
        ] {
            assert!(
                parse_request(bad).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
