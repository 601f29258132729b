//! drainer: stop a TCP server without dropping a live connection.
//!
//! | module | owns |
//! |---|---|
//! | `kernel` | the kernel side: the programs, the live count, the socket table, namespaces, the port claim |
//! | `engine` | the drain: the policy (a pure state machine), progress reports, status records |
//! | `event_loop` | the one tokio-uring loop both modes run, yielding one input at a time |
//! | `supervisor` | `drainer run`: the server as a child, what it may hold, its signals |
//! | `daemon` | `drainer daemon`: the control socket, HTTP, metrics, release targets |
//! | `client` | `drainer drain`, `status`, `release`: the CLI side of the control socket |
//! | `cli` | the command line |
//! | `system` | capabilities, systemd notifications, logging |
//!
//! The control socket's protocol lives in `drainer_common::protocol`, where the fuzz target and
//! xtask reach it without building the eBPF object.
pub mod cli;
pub mod client;
pub mod daemon;
pub(crate) mod engine;
pub(crate) mod event_loop;
pub mod kernel;
pub mod supervisor;
pub mod system;
