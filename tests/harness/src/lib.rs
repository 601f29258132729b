//! Starts drainer, real servers and real clients on this machine's kernel, each test inside a
//! network namespace of its own; the integration tests (`tests/tests`) and the benchmarks
//! (`bench`) both run on it.
//!
//! | module | owns |
//! |---|---|
//! | [`bpf`] | the BPF programs a process holds and the links attached to them (`bpftool`) |
//! | [`drainer`] | `drainer run`, `drainer daemon` and the client commands; their logs and status |
//! | [`servers`] | the servers drainer guards: echo server, uvicorn live app (also as a balancer's backend), signal server |
//! | [`clients`] | the clients: addresses, connections, echo, live WebSocket sessions, HTTP (keep-alive, or a new connection per request) |
//! | [`balancers`] | HAProxy and nginx in front of the servers |
//! | [`netns`] | a throwaway network namespace per test; addresses and nftables rules in it |
//! | [`pressure`] | a tight descriptor limit; idle connections held open by an unprivileged user |
//! | [`process`] | child processes whose output is read line by line, stamped with the clock |
//! | [`reporter`] | processes that report the signals they receive, one at a chosen pid if need be |
//! | [`capabilities`] | commands limited to chosen capabilities; the sets a process holds |
//! | [`cgroup`] | a throwaway cgroup v2 directory per test |
//! | [`old_kernel`] | a seccomp trap that makes bpf(2) answer as an older kernel would |
//! | [`patience`] | how long a wait may last in this environment: every timeout, stretched by one factor |
//! | [`tempdir`] | a private directory per test |
//!
//! The tests need root (they load eBPF programs and create namespaces). Without it they fail with
//! a message saying so; they never skip.
pub mod balancers;
pub mod bpf;
pub mod capabilities;
pub mod cgroup;
pub mod clients;
pub mod drainer;
pub mod netns;
pub mod old_kernel;
pub mod patience;
pub mod pressure;
pub mod process;
pub mod reporter;
pub mod servers;
pub mod tempdir;

pub use patience::patience;

use std::{
    env,
    path::{Path, PathBuf},
};

/// Fails the test unless it runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "integration tests load eBPF programs and create network namespaces: run them as root (`sudo ./x test`)"
    );
}

/// Mounts the BPF file system at /sys/fs/bpf unless one is there, as systemd does at boot: drainer
/// pins the steering that must outlive it there.
pub fn require_bpf_fs() {
    let mounted = nix::sys::statfs::statfs("/sys/fs/bpf")
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
    if !mounted {
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount -t bpf bpf /sys/fs/bpf failed: {status}"
        );
    }
}

/// Fails the test unless `program` is on PATH, naming the Debian `package` that has it (`./x test`
/// installs it).
pub fn require_program(program: &str, package: &str) {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        found,
        "{program} is not on PATH: install Debian's {package} package (`sudo ./x test` does)"
    );
}

/// The drainer binary under test (`./x test` builds it and sets DRAINER_BIN).
pub fn drainer_bin() -> PathBuf {
    let path = env::var_os("DRAINER_BIN")
        .map(PathBuf::from)
        .expect("DRAINER_BIN is not set: run the integration tests through `./x test`");
    assert!(
        path.exists(),
        "DRAINER_BIN={} does not exist",
        path.display()
    );
    path
}

/// The virtualenv python with uvicorn, FastAPI and websockets (`./x test` sets it up).
pub fn python() -> PathBuf {
    env::var_os("DRAINER_TEST_PYTHON")
        .map(PathBuf::from)
        .expect("DRAINER_TEST_PYTHON is not set: run the integration tests through `./x test`")
}

/// A helper script under tests/python (this crate is tests/harness).
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/harness has a parent")
        .join("python")
        .join(name)
}
