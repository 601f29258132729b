//! Child processes whose output a test reads line by line as they run, stamped with the clock.
use std::{
    io::{BufRead as _, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use crate::patience;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// CLOCK_MONOTONIC in seconds: the clock [`Line::at`] is read on, and the one Python's
/// `time.monotonic` reads.
pub fn monotonic_now() -> f64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock_gettime");
    now.tv_sec() as f64 + now.tv_nsec() as f64 / 1e9
}

/// A line of output and the CLOCK_MONOTONIC time it was read.
#[derive(Clone, Debug)]
pub struct Line {
    pub at: f64,
    pub text: String,
}

#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<Line>>,
    changed: Condvar,
}

/// A running process with its stdout and stderr collected (merged, in arrival order).
pub struct Process {
    child: Child,
    lines: Arc<Lines>,
    name: String,
}

impl Process {
    pub fn spawn(name: &str, mut command: Command) -> Self {
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
        let lines = Arc::new(Lines::default());
        collect(child.stdout.take().expect("stdout"), Arc::clone(&lines));
        collect(child.stderr.take().expect("stderr"), Arc::clone(&lines));
        Self {
            child,
            lines,
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal)
            .unwrap_or_else(|err| panic!("signal {} with {signal}: {err}", self.name));
    }

    /// Waits until a line contains `needle`; returns it. Every timeout here is stretched by
    /// [`patience`].
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Line {
        self.wait_for_match(|line| line.contains(needle), timeout)
            .unwrap_or_else(|| {
                panic!(
                    "{} printed no line containing {needle:?} within {:?}; output:\n{}",
                    self.name,
                    patience(timeout),
                    self.output()
                )
            })
    }

    /// Waits until `n` lines contain `needle`; returns the last of them.
    pub fn wait_for_nth(&self, needle: &str, n: usize, timeout: Duration) -> Line {
        let deadline = Instant::now() + patience(timeout);
        let mut lines = self.lines.lines.lock().unwrap();
        loop {
            let found: Vec<&Line> = lines.iter().filter(|l| l.text.contains(needle)).collect();
            if found.len() >= n {
                return found[n - 1].clone();
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                drop(lines);
                panic!(
                    "{} printed {needle:?} fewer than {n} times within {:?}; output:\n{}",
                    self.name,
                    patience(timeout),
                    self.output()
                );
            };
            lines = self.lines.changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn wait_for_match(
        &self,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<Line> {
        let deadline = Instant::now() + patience(timeout);
        let mut lines = self.lines.lines.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|line| matches(&line.text)) {
                return Some(line.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            lines = self.lines.changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn lines(&self) -> Vec<Line> {
        self.lines.lines.lock().unwrap().clone()
    }

    pub fn output(&self) -> String {
        self.lines()
            .iter()
            .map(|line| line.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for exit; panics (after killing it) if it takes longer than `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let timeout = patience(timeout);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the readers take the last lines.
                thread::sleep(Duration::from_millis(50));
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not exit within {timeout:?}; output:\n{}",
                    self.name,
                    self.output()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM if it still runs and waits up to `timeout` for it to exit, then kills it;
    /// never panics, so a guard's `drop` may call it while a test unwinds. For servers that
    /// leave their workers behind when killed outright (nginx's master).
    pub fn terminate(&mut self, timeout: Duration) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = kill(self.pid(), Signal::SIGTERM);
        let deadline = Instant::now() + patience(timeout);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect(stream: impl Read + Send + 'static, lines: Arc<Lines>) {
    thread::spawn(move || {
        for text in BufReader::new(stream).lines() {
            let Ok(text) = text else { break };
            let line = Line {
                at: monotonic_now(),
                text: strip_ansi(&text),
            };
            lines.lines.lock().unwrap().push(line);
            lines.changed.notify_all();
        }
    });
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
