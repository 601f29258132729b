//! The supervised server: started in its own process group, watched through a pidfd.
//!
//! Its own process group keeps a terminal's Ctrl-C away from it: the signal reaches drainer
//! alone, and drainer decides when the server hears of it.
use std::{
    ffi::OsString,
    os::{
        fd::{AsRawFd, OwnedFd, RawFd},
        unix::process::CommandExt as _,
    },
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::{
        resource::{Resource, setrlimit},
        signal::{Signal, kill, killpg},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};

use super::privileges::ChildPrivileges;
use crate::system::{hardening, pidfd};

#[derive(Debug)]
pub struct Child {
    pid: Pid,
    pidfd: OwnedFd,
}

impl Child {
    /// Starts `argv` in a new process group, with `privileges` applied.
    pub fn spawn(argv: &[OsString], privileges: &ChildPrivileges) -> Result<Self> {
        Self::spawn_with(argv, privileges, &[])
    }

    /// As [`Child::spawn`], with `environment` added to what drainer was given.
    pub fn spawn_with(
        argv: &[OsString],
        privileges: &ChildPrivileges,
        environment: &[(String, u16)],
    ) -> Result<Self> {
        let Some((program, args)) = argv.split_first() else {
            bail!(
                "no command to run: give it after `--`, e.g. `drainer run --port 8000 -- uvicorn app:app`"
            );
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .process_group(0)
            // systemd talks to drainer; the server must not report readiness in its place.
            .env_remove("NOTIFY_SOCKET");
        for (name, value) in environment {
            command.env(name, value.to_string());
        }
        let privileges = privileges.clone();
        let open_files = hardening::inherited_open_files_limit();
        // SAFETY: setrlimit and `apply` make system calls only, as the time between fork and exec
        // requires.
        unsafe {
            command.pre_exec(move || {
                // The limit drainer was given, not the one it raised for itself.
                if let Some((soft, hard)) = open_files {
                    setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?;
                }
                privileges.apply()
            })
        };
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", program.to_string_lossy()))?;
        let pid = Pid::from_raw(child.id() as i32);
        // The child is never reaped before this pidfd exists (only `exit_status` reaps), so the
        // pid cannot have been reused.
        let pidfd = pidfd::open(pid.as_raw())
            .context("pidfd_open on the started command (Linux >= 5.3 needed)")?;
        Ok(Self { pid, pidfd })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    pub fn signal(&self, signal: Signal) -> Result<()> {
        kill(self.pid, signal).with_context(|| format!("sending {signal} to process {}", self.pid))
    }

    /// SIGKILL to the whole process group, so no helper of the server outlives it.
    pub fn kill_group(&self) -> Result<()> {
        killpg(self.pid, Signal::SIGKILL)
            .with_context(|| format!("killing process group {}", self.pid))
    }

    /// [`Child::kill_group`], then waits for the child itself to be gone (SIGKILL takes it at
    /// once), so a generation given up leaves no zombie behind.
    pub fn kill_and_reap(&self) -> Result<ExitStatus> {
        self.kill_group()?;
        loop {
            match waitpid(self.pid, None).context("waitpid on a killed command")? {
                WaitStatus::Exited(_, code) => return Ok(ExitStatus::Code(code)),
                WaitStatus::Signaled(_, signal, _) => return Ok(ExitStatus::Signal(signal)),
                _ => {}
            }
        }
    }

    /// Reaps the child once its pidfd has turned readable; `None` while it still runs.
    pub fn try_exit_status(&self) -> Result<Option<ExitStatus>> {
        match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)).context("waitpid on the command")? {
            WaitStatus::Exited(_, code) => Ok(Some(ExitStatus::Code(code))),
            WaitStatus::Signaled(_, signal, _) => Ok(Some(ExitStatus::Signal(signal))),
            _ => Ok(None),
        }
    }
}

/// The pidfd: readable once the child has exited.
impl AsRawFd for Child {
    fn as_raw_fd(&self) -> RawFd {
        self.pidfd.as_raw_fd()
    }
}

/// How the supervised command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(Signal),
}

impl ExitStatus {
    /// The status a shell would report: the exit code, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            Self::Code(code) => code,
            Self::Signal(signal) => 128 + signal as i32,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(code) => write!(f, "exit code {code}"),
            Self::Signal(signal) => write!(f, "signal {signal}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_codes() {
        assert_eq!(ExitStatus::Code(3).shell_code(), 3);
        assert_eq!(ExitStatus::Signal(Signal::SIGTERM).shell_code(), 143);
    }
}
