use std::process::ExitCode;

use clap::Parser as _;
use drainer::{
    cli::{Cli, Command},
    logging,
    run::{self, RunOptions},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
    let result = match cli.command {
        Command::Run(args) => run::run(RunOptions {
            ports: args.ports,
            drain_timeout: args.drain_timeout,
            kill_after: args.kill_after,
            cgroup: args.cgroup,
            command: args.command,
        }),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::from(1)
        }
    }
}
