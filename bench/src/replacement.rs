//! Measurement 9: a server replaced by a new one on one host, the three ways a user can do it,
//! with new connections offered at a fixed rate throughout and one live session held across it:
//! drainer's restart (`drainer run --restart-signal`), a plain stop-and-start, and a drain under
//! `drainer run` followed by a start. What a user weighs: how many new connections fail, whether
//! the session lives, and — for the restart — how soon the new server takes connections once it
//! listens.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use drainer_harness::{
    drainer::drainer_command,
    process::{Process, monotonic_now},
};
use nix::sys::signal::Signal;

use crate::{
    bed::{Bed, PORT},
    load::source,
    roles::connect_from,
};

/// New connections offered per second: one every 2 ms, the resolution of the time to the first
/// steered connection.
pub const RATE: u32 = 500;
/// Threads sharing the offered connections, so a slow answer delays no other.
const OFFERING_THREADS: usize = 8;
/// Connections are offered for this long before the replacement starts.
const LEAD: Duration = Duration::from_millis(500);
/// And for this long after the held session ends.
const TAIL: Duration = Duration::from_millis(1500);
/// How long an offered connection may wait for its answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// `drainer run --restart-signal SIGHUP`, sent SIGHUP.
    Restart,
    /// The server sent SIGTERM, and started again once it exited.
    StopAndStart,
    /// `drainer run` sent SIGTERM, and started again once it exited.
    DrainThenStart,
}

pub const WAYS: [Way; 3] = [Way::Restart, Way::StopAndStart, Way::DrainThenStart];

/// One replacement, measured.
pub struct Replacement {
    pub way: Way,
    pub offered: usize,
    pub failed: usize,
    /// From the first failed connection's start to the last's.
    pub failing_for: Duration,
    /// The held session's request, sent after the replacement began, was answered.
    pub session_kept: bool,
    /// Restart only: from the new server's ready line to the start of the first connection it
    /// answered.
    pub listen_to_first: Option<Duration>,
}

/// An offered connection: when it started (monotonic seconds), and the pid of the server that
/// answered, or why none did.
struct Attempt {
    started: f64,
    answer: Result<u32, ErrorKind>,
}

/// Replaces the server `rounds` times each way, the ways alternating.
pub fn replacements(bed: &Bed, rounds: usize, session: Duration) -> Vec<Replacement> {
    let mut results = Vec::new();
    for round in 0..rounds {
        for way in WAYS {
            let replacement = replace(bed, way, session);
            eprintln!(
                "bench: round {}: {way:?}: {} of {} failed over {:.3} s, session {}{}",
                round + 1,
                replacement.failed,
                replacement.offered,
                replacement.failing_for.as_secs_f64(),
                if replacement.session_kept {
                    "kept"
                } else {
                    "cut"
                },
                replacement
                    .listen_to_first
                    .map(|d| format!(", first steered {:.1} ms after listen", ms(d)))
                    .unwrap_or_default()
            );
            results.push(replacement);
        }
    }
    results
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// The server, as each way runs it.
fn start(bed: &Bed, way: Way) -> Process {
    let me = std::env::current_exe().expect("own path");
    let addr = |port: &str| format!("127.0.0.1:{port}");
    let server = match way {
        Way::Restart | Way::DrainThenStart => {
            let mut options = vec!["run".to_owned(), "--port".into(), PORT.to_string()];
            if way == Way::Restart {
                options.extend(["--restart-signal".into(), "SIGHUP".into()]);
            }
            options.push("--".into());
            let options: Vec<&str> = options.iter().map(String::as_str).collect();
            let mut command = drainer_command(&bed.netns, &options);
            command.env_remove("NOTIFY_SOCKET").arg(&me).args([
                "serve-requests",
                &addr(if way == Way::Restart {
                    "{port}"
                } else {
                    "8000"
                }),
                "4",
            ]);
            Process::spawn("drainer", command)
        }
        Way::StopAndStart => {
            let mut command = bed.netns.command(&me);
            command.args(["serve-requests", &addr("8000"), "4"]);
            Process::spawn("server", command)
        }
    };
    server.wait_for("listening", Duration::from_secs(30));
    server
}

fn replace(bed: &Bed, way: Way, session: Duration) -> Replacement {
    let mut server = start(bed, way);
    let mut held = bed.netns.connect(bed.server_addr()).expect("the session");
    let stop = AtomicBool::new(false);
    let (attempts, replaced_at, session_kept) = thread::scope(|scope| {
        let offering = scope.spawn(|| bed.netns.run(|| offer(bed.server_addr(), &stop)));
        thread::sleep(LEAD);
        let replaced_at = monotonic_now();
        match way {
            Way::Restart => server.signal(Signal::SIGHUP),
            Way::DrainThenStart => server.signal(Signal::SIGTERM),
            Way::StopAndStart => {
                server.signal(Signal::SIGTERM);
                server.wait(Duration::from_secs(30));
                server = start(bed, way);
            }
        }
        thread::sleep(Duration::from_secs_f64(
            (replaced_at + session.as_secs_f64() - monotonic_now()).max(0.0),
        ));
        let session_kept = request(&mut held).is_ok();
        drop(held);
        if way == Way::DrainThenStart {
            server.wait(Duration::from_secs(30));
            server = start(bed, way);
        }
        if way == Way::Restart {
            server.wait_for("restart done", Duration::from_secs(30));
        }
        thread::sleep(TAIL);
        stop.store(true, Ordering::Relaxed);
        (
            offering.join().expect("the offering thread"),
            replaced_at,
            session_kept,
        )
    });
    let listen_to_first = match way {
        Way::Restart => listen_to_first(&server, &attempts),
        Way::StopAndStart | Way::DrainThenStart => None,
    };
    server.signal(Signal::SIGTERM);
    server.wait(Duration::from_secs(30));

    let failed: Vec<f64> = attempts
        .iter()
        .filter(|a| a.answer.is_err())
        .map(|a| a.started)
        .collect();
    let failing_for = match (failed.first(), failed.last()) {
        (Some(first), Some(last)) => Duration::from_secs_f64(last - first),
        _ => Duration::ZERO,
    };
    if let Some(first) = failed.first() {
        eprintln!(
            "bench: {way:?}: first failure {:.3} s after the replacement began",
            first - replaced_at
        );
    }
    Replacement {
        way,
        offered: attempts.len(),
        failed: failed.len(),
        failing_for,
        session_kept,
        listen_to_first,
    }
}

/// From the second generation's ready line, as read from drainer's output, to the start of the
/// first connection a server other than the first answered.
fn listen_to_first(drainer: &Process, attempts: &[Attempt]) -> Option<Duration> {
    let ready: Vec<f64> = drainer
        .lines()
        .iter()
        .filter(|line| line.text == "listening")
        .map(|line| line.at)
        .collect();
    let listened = *ready.get(1)?;
    let first_pid = attempts.iter().find_map(|a| a.answer.ok())?;
    let first_by_next = attempts
        .iter()
        .filter(|a| a.answer.is_ok_and(|pid| pid != first_pid))
        .map(|a| a.started)
        .reduce(f64::min)?;
    Some(Duration::from_secs_f64((first_by_next - listened).max(0.0)))
}

/// Offers a new connection every 1/[`RATE`] s until `stop`, each with one request; runs inside
/// the bed's namespace.
fn offer(to: SocketAddr, stop: &AtomicBool) -> Vec<Attempt> {
    let began = monotonic_now();
    let interval = 1.0 / f64::from(RATE);
    thread::scope(|scope| {
        let workers: Vec<_> = (0..OFFERING_THREADS)
            .map(|worker| {
                scope.spawn(move || {
                    let mut attempts = Vec::new();
                    let mut slot = worker;
                    while !stop.load(Ordering::Relaxed) {
                        let due = began + slot as f64 * interval;
                        let wait = due - monotonic_now();
                        if wait > 0.0 {
                            thread::sleep(Duration::from_secs_f64(wait));
                        }
                        let started = monotonic_now();
                        let answer = connect_from(source(worker), to)
                            .map_err(|err| err.kind())
                            .and_then(|mut stream| request(&mut stream));
                        attempts.push(Attempt { started, answer });
                        slot += OFFERING_THREADS;
                    }
                    attempts
                })
            })
            .collect();
        let mut all: Vec<Attempt> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("an offering thread"))
            .collect();
        all.sort_by(|a, b| a.started.total_cmp(&b.started));
        all
    })
}

/// One request on `stream`; the pid of the server that answered.
fn request(stream: &mut std::net::TcpStream) -> Result<u32, ErrorKind> {
    stream
        .set_read_timeout(Some(ANSWER_WITHIN))
        .map_err(|err| err.kind())?;
    stream
        .write_all(b"GET /ping 0123\n\n")
        .map_err(|err| err.kind())?;
    let mut answer = [0u8; 16];
    stream.read_exact(&mut answer).map_err(|err| err.kind())?;
    std::str::from_utf8(&answer)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or(ErrorKind::InvalidData)
}
