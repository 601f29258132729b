//! `drainer daemon`'s release targets, which it signals holding CAP_KILL: a bad pidfile or pid is
//! refused at start, a pidfile made bad later is not signalled at release, a pid reused by
//! another process is never hit, and a cgroup target reaches every process of its subtree.
use std::{
    fs,
    os::unix::{
        fs::PermissionsExt as _,
        process::{CommandExt as _, ExitStatusExt as _},
    },
    path::Path,
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use drainer_harness::{
    cgroup::TestCgroup,
    drainer::{drainer_client, drainer_command, drainer_daemon},
    drainer_bin,
    netns::TestNetns,
    patience,
    process::{Line, Process},
    python,
    reporter::Reporter,
    require_root, script,
    tempdir::TempDir,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// How long a drainer refusing its command line may take to say so and exit.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

/// How much later than its pidfile a process must start for the pidfile to count as stale:
/// drainer's allowance for clock resolution, plus a margin.
const PAST_PIDFILE_SLACK: Duration = Duration::from_secs(3);

fn socket_arg(dir: &TempDir) -> String {
    dir.path().join("drainer.sock").display().to_string()
}

/// `drainer daemon --port 8000 ARGS`, expected to refuse them: its exit code and output.
fn refused(netns: &TestNetns, args: &[&str]) -> (i32, String) {
    let dir = TempDir::create("refused");
    let socket = socket_arg(&dir);
    let mut command = drainer_command(
        netns,
        &["daemon", "--port", "8000", "--control-socket", &socket],
    );
    command.args(args);
    let mut daemon = Process::spawn("drainer daemon", command);
    let status = daemon.wait(REFUSAL_TIMEOUT);
    (status.code().unwrap_or(-1), daemon.output())
}

/// `drainer daemon --port 8000` with its control socket at `socket` and the release target
/// `target` (`--release-pid PID`, …), once it serves.
fn releasing(netns: &TestNetns, socket: &str, target: &[&str]) -> Process {
    let mut args = vec!["--port", "8000", "--control-socket", socket];
    args.extend_from_slice(target);
    drainer_daemon(netns, &args)
}

/// Drains through `socket` until released; returns the daemon's line about its release target.
fn release(daemon: &Process, socket: &str) -> Line {
    let (code, _, stderr) = drainer_client(&["drain", "--wait", "--socket", socket]);
    assert_eq!(code, 0, "{stderr}");
    daemon
        .wait_for_match(
            |line| line.contains("process(es)") || line.contains("did not signal"),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| {
            panic!(
                "the daemon logged nothing about its release target; output:\n{}",
                daemon.output()
            )
        })
}

/// A root-owned pidfile, mode 0644, holding `content`.
fn write_pidfile(path: &Path, content: &str) {
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn a_pidfile_holding_minus_1_or_0_group_writable_foreign_or_symlinked_is_refused_at_start() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("bad-pidfile");
    let server = Reporter::spawn(&dir, "server");
    let good = dir.path().join("good.pid");
    write_pidfile(&good, &format!("{}\n", server.pid()));

    let minus_one = dir.path().join("minus-one.pid");
    write_pidfile(&minus_one, "-1\n");
    let zero = dir.path().join("zero.pid");
    write_pidfile(&zero, "0\n");
    let group_writable = dir.path().join("group-writable.pid");
    write_pidfile(&group_writable, &format!("{}\n", server.pid()));
    fs::set_permissions(&group_writable, fs::Permissions::from_mode(0o664)).unwrap();
    let foreign = dir.path().join("foreign.pid");
    write_pidfile(&foreign, &format!("{}\n", server.pid()));
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    let symlink = dir.path().join("symlink.pid");
    std::os::unix::fs::symlink(&good, &symlink).unwrap();

    for (pidfile, problem) in [
        (&minus_one, "holds -1: a pid must be greater than 1"),
        (&zero, "holds 0: a pid must be greater than 1"),
        (
            &group_writable,
            "writable by its group or others (mode 0664)",
        ),
        (&group_writable, "`chmod go-w"),
        (&foreign, "owned by uid 65534"),
        (&symlink, "is a symbolic link: drainer does not follow it"),
    ] {
        let (code, output) = refused(&netns, &["--release-pidfile", pidfile.to_str().unwrap()]);
        assert_eq!(code, 1, "{}: {output}", pidfile.display());
        assert!(
            output.contains(&pidfile.display().to_string()) && output.contains(problem),
            "{} was not refused for {problem:?}: {output}",
            pidfile.display()
        );
    }
    assert!(
        server.received_by_now().is_empty(),
        "a refused pidfile's process was signalled"
    );
}

#[test]
fn a_pid_of_1_a_missing_pid_or_a_directory_not_on_cgroup2_is_refused_at_start() {
    require_root();
    let netns = TestNetns::create();
    let (code, output) = refused(&netns, &["--release-pid", "1"]);
    assert_eq!(code, 2, "{output}");
    assert!(output.contains("pid 1 is init"), "{output}");

    let dir = TempDir::create("no-pid");
    let mut exited = Reporter::spawn(&dir, "exited");
    let pid = exited.pid().to_string();
    exited.kill_and_reap();
    let (code, output) = refused(&netns, &["--release-pid", &pid]);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains(&format!("there is no process {pid}")),
        "{output}"
    );

    let cgroup = TestCgroup::create("not-a-dir");
    for (dir, problem) in [
        (dir.path(), "is not on a cgroup v2 file system"),
        (&cgroup.path().join("cgroup.procs"), "is not a directory"),
    ] {
        let (code, output) = refused(&netns, &["--release-cgroup", dir.to_str().unwrap()]);
        assert_eq!(code, 1, "{output}");
        assert!(output.contains(problem), "{output}");
    }
}

#[test]
fn a_pidfile_rewritten_to_minus_1_after_start_is_not_signalled_at_release() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("pidfile-minus-one");
    let pidfile = dir.path().join("app.pid");
    let socket = socket_arg(&dir);
    // kill(-1) would signal every process drainer may signal. Both run in a pid namespace of
    // their own, in a process group of their own, so that even a drainer that did so (as it once
    // did) reaches only the reporter beside it.
    let inside = format!(
        "{python} {reporter} & echo $! > {pidfile}; exec {drainer} daemon --port 8000 \
         --control-socket {socket} --release-pidfile {pidfile}",
        python = python().display(),
        reporter = script("signal_reporter.py").display(),
        pidfile = pidfile.display(),
        drainer = drainer_bin().display(),
    );
    let mut command = netns.command("unshare");
    command
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "sh",
            "-c",
        ])
        .arg(&inside)
        .env("DRAINER_LOG", "info")
        .process_group(0);
    let daemon = Process::spawn("drainer daemon in a pid namespace", command);
    daemon.wait_for("control socket", Duration::from_secs(20));
    daemon
        .wait_for_match(|line| line.starts_with("ready "), Duration::from_secs(30))
        .expect("the reporter never started");
    let reporter = only_grandchild(daemon.pid());

    write_pidfile(&pidfile, "-1\n");
    let line = release(&daemon, &socket);
    assert!(
        line.text.contains("did not signal") && line.text.contains("holds -1"),
        "{}",
        line.text
    );
    // The reporter prints "got SIGWINCH" once it has reported every signal sent before it.
    kill(reporter, Signal::SIGWINCH).unwrap();
    daemon.wait_for("got SIGWINCH", Duration::from_secs(10));
    assert!(
        !daemon.output().contains("got SIGTERM"),
        "the release signalled through a pidfile holding -1:\n{}",
        daemon.output()
    );
}

/// The one child of the one child of `pid` (`unshare` → drainer → the reporter).
fn only_grandchild(pid: Pid) -> Pid {
    let children = |pid: Pid| -> Vec<Pid> {
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .map(|pid| Pid::from_raw(pid.parse().unwrap()))
            .collect()
    };
    let drainer = children(pid);
    assert_eq!(drainer.len(), 1, "unshare's children: {drainer:?}");
    let reporter = children(drainer[0]);
    assert_eq!(reporter.len(), 1, "drainer's children: {reporter:?}");
    reporter[0]
}

#[test]
fn a_release_pid_reused_by_another_process_is_not_signalled() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("pid-reused");
    let socket = socket_arg(&dir);
    let mut server = Reporter::spawn(&dir, "server");
    let pid = server.pid();
    let daemon = releasing(&netns, &socket, &["--release-pid", &pid.to_string()]);
    server.kill_and_reap();
    let mut reuser = Reporter::spawn_with_pid(&dir, "reuser", pid);

    let line = release(&daemon, &socket);
    let received = reuser.received_by_now();
    assert!(
        received.is_empty(),
        "process {pid}, started after the release target {pid} exited, received {received:?}"
    );
    assert!(reuser.running());
    assert!(
        line.text.contains(&format!("--release-pid {pid}"))
            && line.text.contains("0 process(es) signalled, 1 had exited"),
        "{}",
        line.text
    );
}

#[test]
fn a_stale_pidfile_whose_pid_was_reused_is_not_signalled() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("pidfile-stale");
    let socket = socket_arg(&dir);
    let pidfile = dir.path().join("app.pid");
    let mut server = Reporter::spawn(&dir, "server");
    let pid = server.pid();
    write_pidfile(&pidfile, &format!("{pid}\n"));
    let written = Instant::now();
    let daemon = releasing(
        &netns,
        &socket,
        &["--release-pidfile", pidfile.to_str().unwrap()],
    );
    // The server dies without removing its pidfile; later another process gets its pid.
    server.kill_and_reap();
    thread::sleep(PAST_PIDFILE_SLACK.saturating_sub(written.elapsed()));
    let reuser = Reporter::spawn_with_pid(&dir, "reuser", pid);

    let line = release(&daemon, &socket);
    let received = reuser.received_by_now();
    assert!(
        received.is_empty(),
        "process {pid}, started after {} was written, received {received:?}",
        pidfile.display()
    );
    assert!(
        line.text.contains("did not signal") && line.text.contains("the pidfile is stale"),
        "{}",
        line.text
    );
}

#[test]
fn a_cgroup_target_signals_every_live_process_of_the_cgroup_and_its_descendants() {
    require_root();
    let netns = TestNetns::create();
    let dir = TempDir::create("release-cgroup");
    let socket = socket_arg(&dir);
    let cgroup = TestCgroup::create("release");
    let child = cgroup.child("child");
    let grandchild = child.child("grandchild");
    let members = [
        (&cgroup, Reporter::spawn(&dir, "member")),
        (&child, Reporter::spawn(&dir, "child-member")),
        (&grandchild, Reporter::spawn(&dir, "grandchild-member")),
    ];
    for (group, member) in &members {
        group.add(member.pid());
    }
    // More members than drainer holds pidfds for at once.
    let mut sleepers: Vec<Child> = (0..300)
        .map(|_| {
            let sleeper = Command::new("sleep").arg("1000").spawn().unwrap();
            grandchild.add(Pid::from_raw(sleeper.id() as i32));
            sleeper
        })
        .collect();
    // A member whose pid has vanished by the release.
    let mut exited = Reporter::spawn(&dir, "exited-member");
    child.add(exited.pid());
    let daemon = releasing(
        &netns,
        &socket,
        &[
            "--release-cgroup",
            cgroup.path().to_str().unwrap(),
            "--release-signal",
            "SIGUSR1",
        ],
    );
    exited.kill_and_reap();

    let line = release(&daemon, &socket);
    for (_, member) in &members {
        member.wait_for_signal(Signal::SIGUSR1, Duration::from_secs(10));
    }
    let deadline = Instant::now() + patience(Duration::from_secs(30));
    for sleeper in &mut sleepers {
        let status = loop {
            if let Some(status) = sleeper.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "sleep {} in the grandchild cgroup is still running",
                sleeper.id()
            );
            thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            status.signal(),
            Some(Signal::SIGUSR1 as i32),
            "sleep {}",
            sleeper.id()
        );
    }
    assert!(
        line.text.contains(&format!(
            "sent SIGUSR1 to --release-cgroup {}: 303 process(es) signalled",
            cgroup.path().display()
        )),
        "{}",
        line.text
    );
}
