//! What the supervised server may do, what drainer keeps once attached, what drainer does to
//! itself at start, and the least each mode runs with — read from /proc/PID of the real
//! processes, or tried by the server itself.
use std::{fs, io, os::unix::process::CommandExt as _, process::Command, time::Duration};

use drainer::system::capabilities::{
    CAP_BPF, CAP_DAC_READ_SEARCH, CAP_KILL, CAP_NET_ADMIN, CAP_PERFMON, CAP_SETGID, CAP_SETPCAP,
    CAP_SETUID, CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYS_PTRACE, CAP_SYS_RAWIO, Capability,
};
use drainer_harness::{
    capabilities::{ProcessPrivileges, mask, only},
    clients::loopback,
    drainer::{drainer_client, drainer_command, drainer_run, live_field, server_pid, start_drain},
    drainer_bin,
    netns::TestNetns,
    process::Process,
    python, require_root, script,
    servers::echo_server_command,
    tempdir::{SYSTEM_PYTHON, TempDir},
};
use nix::sys::{
    resource::{Resource, getrlimit, setrlimit},
    signal::Signal,
};

/// drainer's own powers, and those that would reach into drainer or the kernel around it.
const WITHHELD: [Capability; 7] = [
    CAP_BPF,
    CAP_SYS_ADMIN,
    CAP_NET_ADMIN,
    CAP_PERFMON,
    CAP_SYS_PTRACE,
    CAP_SYS_MODULE,
    CAP_SYS_RAWIO,
];

/// Not one drainer needs, but one a root-started server keeps.
const CAP_NET_BIND_SERVICE: Capability = Capability {
    name: "CAP_NET_BIND_SERVICE",
    bit: 10,
    why: "binding ports below 1024",
};

/// A stand-in server that needs no files: it announces itself and waits to be stopped.
const WAITER: [&str; 3] = ["sh", "-c", "echo listening; exec sleep 60"];

fn assert_withheld_everywhere(server: &ProcessPrivileges) {
    for (set, bits) in server.sets() {
        for cap in WITHHELD {
            assert_eq!(
                bits & mask([cap.bit]),
                0,
                "the server's {set} set holds {}",
                cap.name
            );
        }
    }
    assert!(server.no_new_privs, "no_new_privs is not set on the server");
}

#[test]
fn a_root_started_server_binds_port_80_but_never_holds_drainers_powers() {
    require_root();
    let netns = TestNetns::create();
    let mut drainer = drainer_run(
        &netns,
        &["--port", "80"],
        &echo_server_command(&[("127.0.0.1", 80)]),
    );
    // The echo server prints this once it has bound port 80.
    drainer.wait_for("listening", Duration::from_secs(20));

    let server = ProcessPrivileges::of(server_pid(&drainer).as_raw());
    assert_withheld_everywhere(&server);
    assert_ne!(
        server.effective & mask([CAP_NET_BIND_SERVICE.bit]),
        0,
        "the server lost CAP_NET_BIND_SERVICE"
    );
    assert_eq!(server.uids, [0, 0, 0, 0]);

    // Serving: only CAP_KILL is in effect; what attaching at a drain's start needs is held in
    // the permitted set alone.
    let attach = mask([CAP_BPF.bit, CAP_NET_ADMIN.bit, CAP_PERFMON.bit]);
    let own = ProcessPrivileges::of(drainer.pid().as_raw());
    assert_eq!(
        own.effective,
        mask([CAP_KILL.bit]),
        "effective while serving"
    );
    assert_eq!(
        own.permitted,
        mask([CAP_KILL.bit]) | attach,
        "permitted while serving"
    );
    assert_eq!(own.inheritable, 0, "inheritable while serving");

    // Released, with the programs attached for good: the attach privileges are gone too.
    drainer.signal(Signal::SIGTERM);
    drainer.wait_for("drained", Duration::from_secs(5));
    let own = ProcessPrivileges::of(drainer.pid().as_raw());
    for (set, bits) in own.sets() {
        assert_eq!(
            bits & !mask([CAP_KILL.bit]),
            0,
            "drainer's {set} set still holds {bits:#x} after the release"
        );
    }
    drainer.wait(Duration::from_secs(10));
}

/// The server tries pidfd_getfd(2) on drainer for descriptors 0–64 twice: at start, and when
/// released, by which time drainer holds nothing but CAP_KILL (so only drainer being non-dumpable
/// stands in the way: a root server's capabilities are then a superset of drainer's).
#[test]
fn a_root_started_server_cannot_copy_drainers_descriptors() {
    require_root();
    let netns = TestNetns::create();
    let thief = [
        python().display().to_string(),
        script("fd_thief.py").display().to_string(),
        "8000".into(),
    ];
    let mut drainer = drainer_run(&netns, &["--port", "8000"], &thief);
    let at_start = drainer.wait_for("theft at start", Duration::from_secs(20));
    drainer.wait_for("listening", Duration::from_secs(5));
    assert_eq!(
        at_start.text.split("theft at start: ").nth(1),
        Some("obtained=0 errors=EPERM:65"),
        "the server reached drainer's descriptors while serving: {}",
        at_start.text
    );

    // drainer still guards the port: a connection is counted and refused while draining.
    let held = netns.connect(loopback(8000)).unwrap();
    assert_eq!(live_field(&start_drain(&drainer).text), 1);
    assert_eq!(
        netns
            .connect(loopback(8000))
            .expect_err("a new connection was accepted while draining")
            .kind(),
        io::ErrorKind::ConnectionRefused
    );
    drop(held);
    let at_release = drainer.wait_for("theft at release", Duration::from_secs(10));
    assert_eq!(
        at_release.text.split("theft at release: ").nth(1),
        Some("obtained=0 errors=EPERM:65"),
        "the released server reached drainer's descriptors: {}",
        at_release.text
    );
    assert_eq!(drainer.wait(Duration::from_secs(10)).code(), Some(0));
}

/// The soft and hard limits on open files of `pid`, from /proc/PID/limits.
fn open_files_limit(pid: i32) -> (u64, u64) {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).expect("reading limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-files line in /proc/{pid}/limits:\n{limits}"));
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn drainer_raises_its_open_files_limit_and_the_server_gets_the_one_drainer_was_given() {
    require_root();
    const SOFT: u64 = 256;
    let netns = TestNetns::create();
    let mut command = drainer_command(&netns, &["run", "--port", "8000", "--"]);
    command.args(WAITER);
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
            Ok(setrlimit(Resource::RLIMIT_NOFILE, SOFT, hard)?)
        });
    }
    let mut drainer = Process::spawn("drainer", command);
    drainer.wait_for("listening", Duration::from_secs(20));

    let (soft, hard) = open_files_limit(drainer.pid().as_raw());
    assert!(hard > SOFT, "this host's hard open-files limit is {hard}");
    assert_eq!(soft, hard, "drainer's soft open-files limit");
    assert_eq!(
        open_files_limit(server_pid(&drainer).as_raw()),
        (SOFT, hard),
        "the server's open-files limits"
    );
    stop_and_drain(&mut drainer);
}

#[test]
fn with_user_the_server_runs_as_that_user_with_no_capability_at_all() {
    require_root();
    let netns = TestNetns::create();
    let mut drainer = drainer_run(
        &netns,
        &["--port", "8000", "--user", "nobody", "--group", "nogroup"],
        &WAITER,
    );
    drainer.wait_for("listening", Duration::from_secs(20));

    let server = ProcessPrivileges::of(server_pid(&drainer).as_raw());
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
    assert_eq!(server.uids, [nobody.uid.as_raw(); 4]);
    assert_eq!(server.gids, [nogroup.gid.as_raw(); 4]);
    assert!(
        server.groups.iter().all(|&g| g == nogroup.gid.as_raw()),
        "root's supplementary groups leaked: {:?}",
        server.groups
    );
    for (set, bits) in server.sets() {
        assert_eq!(bits, 0, "the server's {set} set is {bits:#x}");
    }
    assert!(server.no_new_privs);

    stop_and_drain(&mut drainer);
}

#[test]
fn an_unknown_user_is_named() {
    require_root();
    let netns = TestNetns::create();
    let mut drainer = drainer_run(
        &netns,
        &["--port", "8000", "--user", "no-such-user-here"],
        &WAITER,
    );
    assert_eq!(drainer.wait(Duration::from_secs(10)).code(), Some(1));
    assert!(
        drainer.output().contains("no user \"no-such-user-here\""),
        "{}",
        drainer.output()
    );
}

/// SIGTERM to `drainer run` with no connection live: it drains at once and exits.
fn stop_and_drain(drainer: &mut Process) {
    drainer.signal(Signal::SIGTERM);
    drainer.wait_for("drained", Duration::from_secs(5));
    drainer.wait(Duration::from_secs(10));
}

/// One way of running drainer, the capabilities it is documented to need, and how to see it
/// working with them.
struct Mode {
    name: &'static str,
    needs: &'static [Capability],
    start: fn(&TestNetns, &TempDir, &[Capability]) -> Process,
    /// Drives a started drainer through a drain to its release.
    drain: fn(&mut Process, &TempDir),
}

fn limited(mut command: Command, caps: &[Capability]) -> Process {
    only(&mut command, caps.iter().map(|cap| cap.bit));
    Process::spawn("drainer", command)
}

fn start_run(netns: &TestNetns, _: &TempDir, caps: &[Capability]) -> Process {
    let mut command = drainer_command(netns, &["run", "--port", "8000", "--"]);
    command.args(WAITER);
    limited(command, caps)
}

fn start_run_as_user(netns: &TestNetns, _: &TempDir, caps: &[Capability]) -> Process {
    let mut command = drainer_command(netns, &["run", "--port", "8000", "--user", "nobody", "--"]);
    command.args(WAITER);
    limited(command, caps)
}

/// A listening server as nobody, restarted on SIGHUP: the script from a copy nobody can reach.
fn start_restartable_run_as_user(netns: &TestNetns, dir: &TempDir, caps: &[Capability]) -> Process {
    let mut command = drainer_command(
        netns,
        &[
            "run",
            "--port",
            "8000",
            "--user",
            "nobody",
            "--restart-signal",
            "SIGHUP",
            "--",
        ],
    );
    command
        .arg(SYSTEM_PYTHON)
        .arg(dir.script_copy("generation_server.py"))
        .args(["127.0.0.1", "{port}"]);
    limited(command, caps)
}

/// A restart, then a drain.
fn restart_and_drain_run(drainer: &mut Process, dir: &TempDir) {
    drainer.wait_for("listening", Duration::from_secs(20));
    drainer.signal(Signal::SIGHUP);
    drainer.wait_for("restart done, generation 2 serves", Duration::from_secs(20));
    drain_run(drainer, dir);
}

fn start_daemon(netns: &TestNetns, dir: &TempDir, caps: &[Capability]) -> Process {
    let mut command = drainer_command(netns, &["daemon", "--port", "8000", "--control-socket"]);
    command.arg(dir.path().join("control.sock"));
    limited(command, caps)
}

fn start_daemon_for_another_namespace(
    netns: &TestNetns,
    dir: &TempDir,
    caps: &[Capability],
) -> Process {
    let mut command = Command::new(drainer_bin());
    command
        .args(["daemon", "--port", "8000", "--netns"])
        .arg(netns.path())
        .arg("--control-socket")
        .arg(dir.path().join("control.sock"))
        .env("DRAINER_LOG", "info");
    limited(command, caps)
}

fn drain_run(drainer: &mut Process, _: &TempDir) {
    drainer.wait_for("listening", Duration::from_secs(20));
    stop_and_drain(drainer);
}

fn drain_daemon(drainer: &mut Process, dir: &TempDir) {
    drainer.wait_for("control socket", Duration::from_secs(20));
    let socket = dir.path().join("control.sock");
    let (code, _, stderr) = drainer_client(&["drain", "--socket", socket.to_str().unwrap()]);
    assert_eq!(code, 0, "drain: {stderr}");
    drainer.signal(Signal::SIGTERM);
    drainer.wait(Duration::from_secs(10));
}

#[test]
fn each_mode_runs_with_exactly_its_documented_capabilities_and_names_any_missing_one() {
    require_root();
    let modes = [
        Mode {
            name: "run",
            needs: &[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SETPCAP],
            start: start_run,
            drain: drain_run,
        },
        Mode {
            name: "run --user",
            needs: &[
                CAP_BPF,
                CAP_NET_ADMIN,
                CAP_PERFMON,
                CAP_SETPCAP,
                CAP_SETUID,
                CAP_SETGID,
                CAP_KILL,
            ],
            start: start_run_as_user,
            drain: drain_run,
        },
        Mode {
            name: "run --user --restart-signal",
            needs: &[
                CAP_BPF,
                CAP_NET_ADMIN,
                CAP_PERFMON,
                CAP_SETPCAP,
                CAP_SETUID,
                CAP_SETGID,
                CAP_KILL,
                CAP_DAC_READ_SEARCH,
                CAP_SYS_PTRACE,
            ],
            start: start_restartable_run_as_user,
            drain: restart_and_drain_run,
        },
        Mode {
            name: "daemon",
            needs: &[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON],
            start: start_daemon,
            drain: drain_daemon,
        },
        Mode {
            name: "daemon --netns",
            needs: &[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN],
            start: start_daemon_for_another_namespace,
            drain: drain_daemon,
        },
    ];
    for mode in modes {
        let netns = TestNetns::create();
        let dir = TempDir::create("privileges");
        let mut drainer = (mode.start)(&netns, &dir, mode.needs);
        (mode.drain)(&mut drainer, &dir);

        for &missing in mode.needs {
            let fewer: Vec<Capability> = mode
                .needs
                .iter()
                .copied()
                .filter(|&c| c != missing)
                .collect();
            let mut drainer = (mode.start)(&netns, &dir, &fewer);
            let status = drainer.wait(Duration::from_secs(10));
            let output = drainer.output();
            assert_eq!(
                status.code(),
                Some(1),
                "{} ran without {}:\n{output}",
                mode.name,
                missing.name
            );
            assert!(
                output.contains(&format!("lacks {}", missing.name)),
                "{} without {} did not name it:\n{output}",
                mode.name,
                missing.name
            );
        }
    }
}
