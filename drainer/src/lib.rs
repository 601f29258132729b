//! drainer: stop a TCP server without dropping a live connection.
//!
//! Mechanisms (kernel side, child process, sockets) live in their own modules; the decisions of a
//! drain live in [`drain`], a pure state machine.
pub mod capabilities;
pub mod child;
pub mod claim;
pub mod cli;
pub mod client;
pub mod control;
pub mod daemon;
pub mod drain;
pub mod follow;
pub mod guard;
pub mod http;
pub mod kernel_layout;
pub mod logging;
pub mod loop_io;
pub mod metrics;
pub mod netns;
pub mod privileges;
pub mod programs;
pub mod progress;
pub mod release_target;
pub mod run;
pub mod sock_diag;
pub mod sockstat;
pub mod startup;
pub mod status;
pub mod systemd;
pub mod wire;
