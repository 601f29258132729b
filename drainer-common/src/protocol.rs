//! The control socket's protocol: one JSON request per connection — `status`, `drain`
//! (optionally waiting), `wait`, `release` — answered by JSON lines, with the limits the daemon
//! reads requests under, and the status record every report is made of.
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest request line the daemon reads.
pub const MAX_REQUEST: usize = 4096;
/// How long the daemon waits for a request line.
pub const REQUEST_TIME: Duration = Duration::from_secs(5);
/// The longest drain deadline a request may ask for.
const MAX_TIMEOUT_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

#[derive(Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    // Braced, so that unknown fields are refused for every command.
    Status {},
    Drain {
        #[serde(default)]
        wait: bool,
        /// This drain's deadline, if it starts it; the daemon's `--drain-timeout` otherwise.
        #[serde(default)]
        timeout_seconds: Option<f64>,
    },
    Wait {},
    Release {},
}

#[derive(Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    Status(Status),
    Progress(Status),
    Released(Status),
    Error { message: String },
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
        timeout_seconds: Some(seconds),
        ..
    } = request
        && !(seconds > 0.0 && seconds <= MAX_TIMEOUT_SECONDS)
    {
        return Err(format!(
            "timeout_seconds must be in (0, {MAX_TIMEOUT_SECONDS}]"
        ));
    }
    Ok(request)
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
                timeout_seconds: Some(30.0)
            })
        );
        assert_eq!(
            parse_request(b"{\"command\":\"drain\"}"),
            Ok(Request::Drain {
                wait: false,
                timeout_seconds: None
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
