//! Processes that report the signals they receive (tests/python/signal_reporter.py), to see whom a
//! release reached; one can be given a chosen pid, to stand for a process that reused the pid of
//! one that exited.
use std::{
    ffi::CString,
    fs::{self, File},
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};

use crate::{python, script, tempdir::TempDir};

/// How long a reporter may take to start (Python's imports on a busy host).
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Reporter {
    name: String,
    pid: Pid,
    output: PathBuf,
    reaped: bool,
}

/// clone3(2)'s argument, as of Linux 5.7 (CLONE_ARGS_SIZE_VER2); libc has it only for musl.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

impl Reporter {
    /// Starts a reporter whose output goes to a file in `dir`; returns once it is ready.
    pub fn spawn(dir: &TempDir, name: &str) -> Self {
        Self::start(dir, name, None)
    }

    /// As [`Reporter::spawn`], with pid `pid` in this pid namespace (clone3 with set_tid; needs
    /// CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE). Fails if `pid` is taken.
    pub fn spawn_with_pid(dir: &TempDir, name: &str, pid: Pid) -> Self {
        let reporter = Self::start(dir, name, Some(pid));
        assert_eq!(reporter.pid, pid, "clone3 gave {name} another pid");
        reporter
    }

    fn start(dir: &TempDir, name: &str, pid: Option<Pid>) -> Self {
        let output = dir.path().join(format!("{name}.out"));
        let file = File::create(&output).expect("create the reporter's output file");
        let program = CString::new(python().as_os_str().as_bytes()).unwrap();
        let reporter_script = script("signal_reporter.py");
        let args = [
            program.clone(),
            CString::new(reporter_script.as_os_str().as_bytes()).unwrap(),
        ];
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|arg| arg.as_ptr()).collect();
        argv.push(std::ptr::null());
        let set_tid = pid.map(|pid| pid.as_raw());
        let clone_args = CloneArgs {
            exit_signal: libc::SIGCHLD as u64,
            set_tid: set_tid.as_ref().map_or(0, |tid| tid as *const i32 as u64),
            set_tid_size: u64::from(set_tid.is_some()),
            ..CloneArgs::default()
        };
        // SAFETY: a fork-like clone3 (no CLONE_VM). The child calls only async-signal-safe
        // functions on memory prepared before the call, then execs or exits.
        let cloned = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &clone_args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if cloned == 0 {
            // SAFETY: as above; in the child.
            unsafe {
                libc::dup2(file.as_raw_fd(), 1);
                libc::dup2(file.as_raw_fd(), 2);
                libc::execv(program.as_ptr(), argv.as_ptr());
                libc::_exit(127);
            }
        }
        if cloned < 0 {
            panic!(
                "cannot start {name} (clone3, pid {pid:?}): {}",
                Errno::last()
            );
        }
        let reporter = Self {
            name: name.to_owned(),
            pid: Pid::from_raw(cloned as i32),
            output,
            reaped: false,
        };
        reporter.wait_for_line("ready", START_TIMEOUT);
        reporter
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The signals reported so far, by name ("SIGTERM").
    pub fn received(&self) -> Vec<String> {
        fs::read_to_string(&self.output)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| Some(line.strip_prefix("got ")?.to_owned()))
            .collect()
    }

    /// Waits until it reports `signal`.
    pub fn wait_for_signal(&self, signal: Signal, timeout: Duration) {
        self.wait_for_line(&format!("got {}", signal.as_str()), timeout);
    }

    /// The signals it has received, all of them: any signal sent to it before this call has been
    /// reported once it reports the SIGWINCH this sends (see signal_reporter.py).
    pub fn received_by_now(&self) -> Vec<String> {
        let before = self
            .received()
            .iter()
            .filter(|name| *name == "SIGWINCH")
            .count();
        kill(self.pid, Signal::SIGWINCH).expect("signal the reporter");
        let deadline = Instant::now() + crate::patience(START_TIMEOUT);
        loop {
            let received = self.received();
            if received.iter().filter(|name| *name == "SIGWINCH").count() > before {
                return received
                    .into_iter()
                    .filter(|name| name != "SIGWINCH")
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not report SIGWINCH; output:\n{}",
                self.name,
                self.output()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether it still runs; reaps it if it has exited.
    pub fn running(&mut self) -> bool {
        if self.reaped {
            return false;
        }
        match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => true,
            _ => {
                self.reaped = true;
                false
            }
        }
    }

    /// Kills it and reaps it: its pid is free again once this returns.
    pub fn kill_and_reap(&mut self) {
        if self.reaped {
            return;
        }
        let _ = kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
        self.reaped = true;
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.output).unwrap_or_default()
    }

    fn wait_for_line(&self, needle: &str, timeout: Duration) {
        let timeout = crate::patience(timeout);
        let deadline = Instant::now() + timeout;
        while !self.output().lines().any(|line| line.starts_with(needle)) {
            assert!(
                Instant::now() < deadline,
                "{} (pid {}) printed no line starting {needle:?} within {timeout:?}; output:\n{}",
                self.name,
                self.pid,
                self.output()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}
