//! Bad input and missing privileges or kernel features: a clear error and a non-zero exit, never a
//! panic and never a half-attached drainer.
use std::{
    ffi::CString,
    io,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Output},
};

use drainer_harness::{
    drainer::drainer_command, drainer_bin, netns::TestNetns, old_kernel, require_root,
    tempdir::TempDir,
};

fn drainer(args: &[&str]) -> Command {
    drainer_at(&drainer_bin(), args)
}

fn drainer_at(binary: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(binary);
    command.args(args).env("DRAINER_LOG", "info");
    command
}

fn run(mut command: Command) -> (i32, String) {
    let Output { status, stderr, .. } = command.output().expect("run drainer");
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert!(!stderr.contains("panicked"), "drainer panicked:\n{stderr}");
    (status.code().expect("drainer died of a signal"), stderr)
}

#[test]
fn malformed_command_lines_are_rejected_with_usage_errors() {
    for (args, says) in [
        (&["run", "--port", "8000"][..], "<COMMAND>"),
        (
            &["run", "--port", "0", "--", "true"],
            "0 is not in 1..=65535",
        ),
        (
            &["run", "--port", "65536", "--", "true"],
            "65536 is not in 1..=65535",
        ),
        (&["run", "--port", "http", "--", "true"], "invalid digit"),
        (&["run", "--", "true"], "--port <PORT>"),
        (
            &["run", "--port", "8000", "--frobnicate", "--", "true"],
            "unexpected argument '--frobnicate'",
        ),
        (
            &[
                "run",
                "--port",
                "8000",
                "--drain-timeout",
                "soon",
                "--",
                "true",
            ],
            "write a duration",
        ),
        (&["serve"], "unrecognized subcommand 'serve'"),
    ] {
        let (code, stderr) = run(drainer(args));
        assert_eq!(code, 2, "{args:?} exited {code}:\n{stderr}");
        assert!(
            stderr.contains(says),
            "{args:?} did not say {says:?}:\n{stderr}"
        );
    }
}

#[test]
fn an_unprivileged_user_is_told_which_capabilities_are_missing() {
    require_root();
    // From a copy nobody can reach, wherever the clone lives.
    let dir = TempDir::create("unprivileged");
    let mut command = drainer_at(
        &dir.drainer_copy(),
        &["run", "--port", "8000", "--", "true"],
    );
    command.uid(65534).gid(65534);
    let (code, stderr) = run(command);
    assert_eq!(code, 1, "{stderr}");
    for cap in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"] {
        assert!(stderr.contains(cap), "{cap} not named:\n{stderr}");
    }
}

#[test]
fn root_without_cap_bpf_is_told_so() {
    require_root();
    let mut command = drainer(&["run", "--port", "8000", "--", "true"]);
    // SAFETY: prctl is async-signal-safe. Dropped from the bounding set, CAP_BPF is not granted
    // to root's new program at exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_CAPBSET_DROP, 39, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (code, stderr) = run(command);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("lacks CAP_BPF"), "{stderr}");
    assert!(
        !stderr.contains("CAP_NET_ADMIN"),
        "named a capability it has:\n{stderr}"
    );
}

#[test]
fn a_kernel_without_btf_is_named() {
    require_root();
    let mut command = drainer(&["run", "--port", "8000", "--", "true"]);
    // SAFETY: only async-signal-safe calls (unshare, mount) between fork and exec; the strings
    // are built before the fork.
    let none = CString::new("none").unwrap();
    let root = CString::new("/").unwrap();
    let null = CString::new("/dev/null").unwrap();
    let btf = CString::new("/sys/kernel/btf/vmlinux").unwrap();
    unsafe {
        command.pre_exec(move || {
            // A private mount namespace in which the kernel's BTF is an empty file.
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    none.as_ptr(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                || libc::mount(
                    null.as_ptr(),
                    btf.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (code, stderr) = run(command);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("CONFIG_DEBUG_INFO_BTF"), "{stderr}");
}

#[test]
fn a_command_that_does_not_exist_is_named() {
    require_root();
    // drainer attaches before it starts the command: keep that inside a test namespace.
    let netns = TestNetns::create();
    let command = drainer_command(
        &netns,
        &["run", "--port", "8000", "--", "/nonexistent/server"],
    );
    let (code, stderr) = run(command);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cannot start /nonexistent/server"),
        "{stderr}"
    );
}

#[test]
fn a_kernel_without_the_sk_lookup_program_type_is_named() {
    require_root();
    let netns = TestNetns::create();
    let mut command = drainer_command(&netns, &["run", "--port", "8000", "--", "true"]);
    old_kernel::trap_bpf_calls(&mut command);
    let child = command
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start drainer");
    let supervisor =
        old_kernel::answer_as_if_missing(child.id(), old_kernel::BPF_PROG_TYPE_SK_LOOKUP);
    let Output { status, stderr, .. } = child.wait_with_output().unwrap();
    supervisor.join().unwrap();
    let stderr = String::from_utf8_lossy(&stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("this kernel cannot load sk_lookup programs (Linux >= 5.9 needed)"),
        "{stderr}"
    );
}
