//! drainer: stop a TCP server without dropping a live connection.
pub mod capabilities;
pub mod cgroup;
pub mod netns;
pub mod programs;
