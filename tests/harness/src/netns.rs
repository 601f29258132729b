//! A throwaway network namespace per test: tests run in parallel and never touch the host's ports.
use std::{
    fs::File,
    io::{self, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns};

pub struct TestNetns {
    name: String,
    path: PathBuf,
}

impl TestNetns {
    /// Creates `drainer-<pid>-<n>` with loopback up.
    pub fn create() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "drainer-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        let path = PathBuf::from("/run/netns").join(&name);
        Self { name, path }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command that will run inside this namespace (its mounts untouched, unlike
    /// `ip netns exec`, which remounts /sys and hides the cgroup v2 hierarchy).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let file = File::open(&self.path).expect("open netns");
        let mut command = Command::new(program);
        // SAFETY: setns is async-signal-safe; `file` moves into the closure and outlives the fork.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }

    /// Runs `work` on a thread inside this namespace; sockets it creates stay there.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let file = File::open(&self.path).expect("open netns");
        thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                    work()
                })
                .join()
                .expect("thread inside the test namespace panicked")
        })
    }

    /// Joins this namespace and `peer` with a veth pair, 10.200.0.1/24 here and 10.200.0.2/24
    /// there; returns the peer's address.
    pub fn link_to(&self, peer: &TestNetns) -> std::net::IpAddr {
        ip(&[
            "-n", &self.name, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0",
            "netns", &peer.name,
        ]);
        for (ns, addr) in [(&self.name, "10.200.0.1/24"), (&peer.name, "10.200.0.2/24")] {
            ip(&["-n", ns, "addr", "add", addr, "dev", "veth0"]);
            ip(&["-n", ns, "link", "set", "veth0", "up"]);
        }
        [10, 200, 0, 2].into()
    }

    pub fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        self.run(|| TcpStream::connect(addr))
    }

    pub fn listen(&self, addr: SocketAddr) -> TcpListener {
        self.run(|| TcpListener::bind(addr))
            .expect("bind in the test namespace")
    }

    /// Returns once something accepts connections on `addr`, failing after `timeout`.
    pub fn wait_until_listening(&self, addr: SocketAddr, timeout: Duration) {
        let timeout = crate::patience(timeout);
        let deadline = Instant::now() + timeout;
        while let Err(err) = self.connect(addr) {
            assert!(
                Instant::now() < deadline,
                "nothing listens on {addr} after {timeout:?}: {err}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Adds `cidr` to this namespace's loopback device: a local address (a service VIP, say)
    /// without a dummy device, which not every kernel has.
    pub fn add_loopback_address(&self, cidr: &str) {
        ip(&["-n", &self.name, "addr", "add", cidr, "dev", "lo"]);
    }

    /// Applies `ruleset` with `nft -f -` inside this namespace, as one transaction.
    pub fn nft(&self, ruleset: &str) {
        crate::require_program("nft", "nftables");
        let mut nft = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot run nft: {err}; install Debian's nftables package")
            });
        nft.stdin
            .take()
            .expect("nft's stdin")
            .write_all(ruleset.as_bytes())
            .expect("write the ruleset to nft");
        let output = nft.wait_with_output().expect("wait for nft");
        assert!(
            output.status.success(),
            "nft -f failed ({}): {}\nruleset:\n{ruleset}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for TestNetns {
    /// Kills what still runs in the namespace first: a server whose drainer a test killed runs
    /// on (drainer fails open), and would outlive the test.
    fn drop(&mut self) {
        if let Ok(output) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        self.remove_steering_pins();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

impl TestNetns {
    /// Steering a killed drainer left pinned for this namespace (drainer fails open): the
    /// namespace goes, and its pins with it.
    fn remove_steering_pins(&self) {
        let Ok(Ok(cookie)) = std::panic::catch_unwind(|| {
            self.run(|| {
                let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
                let mut cookie = 0u64;
                let mut len = size_of::<u64>() as libc::socklen_t;
                // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
                let read = unsafe {
                    libc::getsockopt(
                        socket.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_NETNS_COOKIE,
                        (&raw mut cookie).cast(),
                        &mut len,
                    )
                };
                if read == 0 {
                    Ok(cookie)
                } else {
                    Err(io::Error::last_os_error())
                }
            })
        }) else {
            return;
        };
        let prefix = format!("steering-{cookie}-");
        let Ok(pins) = std::fs::read_dir("/sys/fs/bpf/drainer") else {
            return;
        };
        for pin in pins.flatten() {
            if pin.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(pin.path());
            }
        }
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("run ip (iproute2)");
    assert!(status.success(), "ip {} failed", args.join(" "));
}
