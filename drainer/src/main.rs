use std::process::ExitCode;

use drainer::{
    cli::{Cli, Command},
    client::{self, DrainOptions},
    daemon::{self, Allowed, DaemonOptions, ReleaseTarget},
    supervisor::{self, RestartOptions, RunOptions},
    system::{hardening, logging},
};

fn main() -> ExitCode {
    let cli = Cli::parse_checked();
    logging::init();
    // Before anything privileged is created: `run` and `daemon` hold drainer's BPF objects.
    if matches!(cli.command, Command::Run(_) | Command::Daemon(_))
        && let Err(err) = hardening::harden()
    {
        tracing::error!("{err:#}");
        return ExitCode::from(1);
    }
    let result = match cli.command {
        Command::Run(args) => supervisor::run(RunOptions {
            ports: args.ports,
            drain: args.drain.settings(),
            kill_after: args.kill_after,
            user: args.user,
            group: args.group,
            command: args.command,
            restart: args.restart_signal.map(|signal| RestartOptions {
                signal,
                ready_timeout: args.ready_timeout,
            }),
        }),
        Command::Daemon(args) => {
            ReleaseTarget::choose(args.release_pid, args.release_pidfile, args.release_cgroup)
                .and_then(|release_target| {
                    daemon::daemon(DaemonOptions {
                        release_target,
                        ports: args.ports,
                        netns: args.netns,
                        drain: args.drain.settings(),
                        control_socket: args.control_socket,
                        allowed: Allowed {
                            uids: args.allow_uids,
                            gids: args.allow_gids,
                        },
                        http: args.http,
                        http_token_file: args.http_token_file,
                        release_signal: args.release_signal,
                    })
                })
        }
        Command::Drain(args) => client::drain(&DrainOptions {
            socket: args.socket.path,
            wait: args.wait,
            timeout: args.timeout,
            accept_for: args.accept_for,
            release_when_idle: args.release_when_idle,
        }),
        Command::Status(args) => client::status(&args.socket.path, args.json),
        Command::Release(socket) => client::release(&socket.path),
        Command::Resume(socket) => client::resume(&socket.path),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::from(1)
        }
    }
}
