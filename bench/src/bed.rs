//! The test bed: a network namespace tuned for connection churn, the servers in it, and drainer
//! (or the peers) attached to it.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    time::Duration,
};

use drainer_harness::{
    drainer::drainer_command, netns::TestNetns, process::Process, tempdir::TempDir,
};

use crate::load;

pub const PORT: u16 = 8000;

pub struct Bed {
    pub netns: TestNetns,
    pub dir: TempDir,
}

impl Bed {
    pub fn create(name: &str) -> Self {
        let netns = TestNetns::create();
        tune_for_clients(&netns);
        for (key, value) in [
            ("net.core.somaxconn", "65535"),
            ("net.ipv4.tcp_max_syn_backlog", "65535"),
        ] {
            sysctl(&netns, key, value);
        }
        Self {
            netns,
            dir: TempDir::create(name),
        }
    }

    pub fn server_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), PORT)
    }

    /// `drainer-bench ROLE ARGS` inside the namespace, once it printed `ready_line`.
    pub fn role(&self, args: &[&str], ready_line: &str) -> Process {
        let mut command = self
            .netns
            .command(std::env::current_exe().expect("own path"));
        command.args(args);
        let process = Process::spawn(args[0], command);
        process.wait_for(ready_line, Duration::from_secs(30));
        process
    }

    /// `drainer daemon` guarding the port, once serving.
    pub fn daemon(&self) -> Process {
        let daemon = spawn_daemon(&self.netns, &self.dir.path().join("drainer.sock"));
        daemon.wait_for("control socket", Duration::from_secs(60));
        daemon
    }

    /// A REJECT-on-drain nftables ruleset, loaded while serving: a rule on every incoming packet
    /// matching SYNs to the ports in a set that stays empty until a drain.
    pub fn load_nft_reject(&self) {
        let ruleset = "table inet drain {
 set draining { type inet_service; }
 chain input { type filter hook input priority 0;
  tcp dport @draining tcp flags & (syn | ack) == syn reject with tcp reset
 }
}
";
        let path = self.dir.path().join("drain.nft");
        std::fs::write(&path, ruleset).unwrap();
        run(self.netns.command("nft").arg("-f").arg(&path));
    }

    pub fn unload_nft(&self) {
        run(self
            .netns
            .command("nft")
            .args(["delete", "table", "inet", "drain"]));
    }

    /// Established connections to the port, as `ss` counts them.
    pub fn ss_count(&self) -> usize {
        let output = self
            .netns
            .command("ss")
            .args([
                "-Htn",
                "state",
                "established",
                &format!("( sport = :{PORT} )"),
            ])
            .output()
            .expect("ss (iproute2)");
        output.stdout.iter().filter(|&&b| b == b'\n').count()
    }
}

/// Clients in a namespace of their own, joined to a bed's by a veth pair, as a real server's
/// clients are elsewhere: the bed's namespace then holds only the server's side of each
/// connection, as a pod's does. Its source addresses are [`CLIENT_SIDE_NET`]'s.
pub struct ClientSide {
    pub netns: TestNetns,
    /// The server's address on the pair, for the clients to connect to.
    pub server: IpAddr,
}

impl ClientSide {
    pub fn create(bed: &Bed, sources: usize) -> Self {
        let netns = TestNetns::create();
        bed.netns.link_to(&netns);
        tune_for_clients(&netns);
        for index in 0..sources {
            let source = load::source_in(CLIENT_SIDE_NET, index);
            run(netns
                .command("ip")
                .args(["addr", "add", &format!("{source}/32"), "dev", "veth0"]));
        }
        let [a, b] = CLIENT_SIDE_NET;
        run(bed.netns.command("ip").args([
            "route",
            "add",
            &format!("{a}.{b}.0.0/16"),
            "dev",
            "veth0",
        ]));
        Self {
            netns,
            server: [10, 200, 0, 1].into(),
        }
    }
}

/// The /16 a [`ClientSide`]'s source addresses come from ([`load::source_in`]).
pub const CLIENT_SIDE_NET: [u8; 2] = [10, 201];

/// Client churn: a wide ephemeral range, and TIME_WAIT ports reused for new connections.
fn tune_for_clients(netns: &TestNetns) {
    for (key, value) in [
        ("net.ipv4.ip_local_port_range", "1024 65535"),
        ("net.ipv4.tcp_tw_reuse", "1"),
    ] {
        sysctl(netns, key, value);
    }
}

fn sysctl(netns: &TestNetns, key: &str, value: &str) {
    run(netns
        .command("sysctl")
        .args(["-q", "-w", &format!("{key}={value}")]));
}

/// Namespaces beside a bed's on the same host, each for a serving drainer of its own: the
/// neighbours a node guarding many servers gives a namespace without drainer.
pub struct Neighbours {
    namespaces: Vec<TestNetns>,
    dir: TempDir,
}

impl Neighbours {
    pub fn create(count: usize) -> Self {
        Self {
            namespaces: (0..count).map(|_| TestNetns::create()).collect(),
            dir: TempDir::create("neighbours"),
        }
    }

    /// Daemons guarding the port in the first `count` namespaces, started together and returned
    /// once every one serves; dropping them kills them.
    pub fn daemons(&self, count: usize) -> Vec<Process> {
        let daemons: Vec<Process> = self.namespaces[..count]
            .iter()
            .enumerate()
            .map(|(i, netns)| spawn_daemon(netns, &self.dir.path().join(format!("{i}.sock"))))
            .collect();
        for daemon in &daemons {
            daemon.wait_for("control socket", Duration::from_secs(60));
        }
        daemons
    }
}

/// `drainer daemon` guarding the port in `netns`, just started.
fn spawn_daemon(netns: &TestNetns, control_socket: &Path) -> Process {
    let mut command = drainer_command(
        netns,
        &["daemon", "--port", &PORT.to_string(), "--control-socket"],
    );
    command.arg(control_socket);
    Process::spawn("drainer daemon", command)
}

fn run(command: &mut Command) {
    let status = command.status().expect("spawn");
    assert!(status.success(), "{command:?} failed");
}
