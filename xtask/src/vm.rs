//! `cargo xtask vm-test`: the unit and integration tests under each kernel series Debian's archive
//! offers, booted in qemu with software emulation (TCG), so older kernels are tested without
//! installing them or rebooting this machine.
//!
//! The VM boots the kernel with a busybox initramfs (`vm-init.sh`) that mounts this machine's
//! root filesystem read-only over virtio-9p and runs the test binaries built here, chrooted into
//! it: the guest sees the same toolchain, Python virtualenv and tools as the host. The guest
//! writes each binary's output and exit status to a second, writable share, then powers off.
//! Kernel packages are downloaded and unpacked once, into `~/.cache/drainer/kernels/<version>/`.
use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{self, cargo, output, run},
    python, system,
};

/// What the guest must load before it can mount the host's root; the rest load on demand.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];
const BUSYBOX: &str = "/bin/busybox";
/// Booting to PID 1 and mounting the shares takes well under a minute under emulation.
const BOOT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How many console lines a failure report quotes.
const CONSOLE_TAIL: usize = 30;

pub struct Options {
    /// A version the archive offers (6.1.0-57) or a series (6.1); every series when absent.
    pub kernel: Option<String>,
    /// Passed to each test binary: only the tests whose names contain it.
    pub filter: Option<String>,
    /// How long one VM may run its tests.
    pub timeout: Duration,
}

pub fn vm_test(options: &Options) -> Result<()> {
    system::ensure_packages(&[("qemu-system-x86_64", "qemu-system-x86")])?;
    system::ensure_debian_packages(&["busybox-static"])?;
    let kernels = choose(&offered_kernels()?, options.kernel.as_deref())?;
    let python = python::ensure_venv()?;
    // Under emulation a debug drainer takes about 4 s to attach (parsing the kernel's BTF, twice),
    // longer than some tests give it; the release build, the one deployed, takes about 1 s.
    let drainer = crate::build(true)?;
    let tests = build_tests()?;
    let images = kernels.iter().map(fetch).collect::<Result<Vec<_>>>()?;
    let env = test_env(&drainer, &python)?;

    let mut reports = Vec::new();
    for image in &images {
        let work = cmd::target_dir()?.join("vm-test").join(&image.version);
        let plan = Plan {
            image,
            tests: &tests,
            filter: options.filter.as_deref(),
            env: &env,
        };
        let started = Instant::now();
        let outcome = boot_and_test(&plan, &work, options.timeout)
            .with_context(|| format!("running the tests under {}", image.version))?;
        reports.push(Report {
            image,
            outcome,
            wall: started.elapsed(),
            work,
        });
    }

    eprintln!("\nxtask: vm-test summary");
    for report in &reports {
        eprint!("{report}");
    }
    let failed: Vec<&str> = reports
        .iter()
        .filter(|report| !report.outcome.passed())
        .map(|report| report.image.version.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "vm-test failed under {}; each kernel's console and test logs are in {}",
            failed.join(", "),
            cmd::target_dir()?.join("vm-test").display()
        );
    }
    Ok(())
}

/// A kernel Debian's archive offers as `linux-image-<version>-amd64-unsigned`.
#[derive(Clone, Debug)]
struct Kernel {
    version: String,
}

impl Kernel {
    fn package(&self) -> String {
        format!("linux-image-{}-amd64-unsigned", self.version)
    }

    /// The upstream series: 6.1 for 6.1.0-57, 6.12 for 6.12.118+deb12.
    fn series(&self) -> String {
        self.version
            .splitn(3, '.')
            .take(2)
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The version's numbers in order (6.1.0-57 → 6, 1, 0, 57), which order the versions of
    /// one series.
    fn numbers(&self) -> Vec<u64> {
        numbers(&self.version)
    }
}

fn numbers(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn offered_kernels() -> Result<Vec<Kernel>> {
    let mut kernels = search_kernel_packages()?;
    if kernels.is_empty() {
        // A fresh machine may not have read its package lists yet.
        run(Command::new("apt-get").args(["update", "-q"]))?;
        kernels = search_kernel_packages()?;
    }
    if kernels.is_empty() {
        bail!(
            "apt-cache finds no linux-image-*-amd64-unsigned package: vm-test takes its kernels \
             from Debian's archive, which must be in the apt sources"
        );
    }
    Ok(kernels)
}

fn search_kernel_packages() -> Result<Vec<Kernel>> {
    let listing = output(Command::new("apt-cache").args([
        "search",
        "--names-only",
        "^linux-image-.*-amd64-unsigned$",
    ]))
    .context("vm-test takes its kernels from Debian's archive, through apt-cache")?;
    Ok(listing
        .lines()
        .filter_map(|line| {
            let name = line.split_whitespace().next()?;
            let version = name
                .strip_prefix("linux-image-")?
                .strip_suffix("-amd64-unsigned")?;
            // The other flavours (cloud, rt) end the version with their name.
            version
                .split('-')
                .all(|part| part.starts_with(|c: char| c.is_ascii_digit()))
                .then(|| Kernel {
                    version: version.to_owned(),
                })
        })
        .collect())
}

/// The newest of each series, oldest series first; or the one `wanted` names.
fn choose(offered: &[Kernel], wanted: Option<&str>) -> Result<Vec<Kernel>> {
    let mut newest: BTreeMap<Vec<u64>, &Kernel> = BTreeMap::new();
    for kernel in offered {
        let series = numbers(&kernel.series());
        if newest
            .get(&series)
            .is_none_or(|known| known.numbers() < kernel.numbers())
        {
            newest.insert(series, kernel);
        }
    }
    let Some(wanted) = wanted else {
        return Ok(newest.into_values().cloned().collect());
    };
    if let Some(kernel) = offered.iter().find(|kernel| kernel.version == wanted) {
        return Ok(vec![kernel.clone()]);
    }
    if let Some(kernel) = newest.values().find(|kernel| kernel.series() == wanted) {
        return Ok(vec![(*kernel).clone()]);
    }
    let mut versions: Vec<&str> = offered.iter().map(|k| k.version.as_str()).collect();
    versions.sort_unstable();
    bail!(
        "Debian's archive offers no kernel {wanted}: pass a series ({}) or one of {}",
        newest
            .values()
            .map(|kernel| kernel.series())
            .collect::<Vec<_>>()
            .join(", "),
        versions.join(", ")
    )
}

/// A kernel package unpacked in the cache, its modules indexed.
struct Image {
    version: String,
    /// The Debian package's version, which names the upstream release: 6.1.192-3.
    package_version: String,
    vmlinuz: PathBuf,
    /// `lib/modules` of the package, holding one `<release>/` directory.
    modules: PathBuf,
    /// The kernel's release, `uname -r` in the guest: 6.1.0-57-amd64.
    release: String,
}

fn fetch(kernel: &Kernel) -> Result<Image> {
    let root = system::cache_dir()?.join("kernels").join(&kernel.version);
    let stamp = root.join(".unpacked");
    if !stamp.exists() {
        unpack(kernel, &root)?;
        let release = release_in(&root)?;
        // modules.dep is left to depmod at install time; busybox's depmod writes it, with the
        // modules.alias the guest's modprobe needs to load modules on demand.
        run(Command::new(BUSYBOX)
            .args(["depmod", "-b"])
            .arg(&root)
            .arg(&release))?;
        let deb = package_file(&root.join("download"))?;
        let package_version = output(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"))?;
        fs::remove_dir_all(root.join("download"))?;
        fs::write(&stamp, package_version.trim())?;
    }
    let release = release_in(&root)?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.exists() {
        bail!(
            "{} holds no boot/vmlinuz-{release}: remove {} and run again",
            kernel.package(),
            root.display()
        );
    }
    Ok(Image {
        version: kernel.version.clone(),
        package_version: fs::read_to_string(&stamp)?,
        vmlinuz,
        modules: root.join("lib/modules"),
        release,
    })
}

fn unpack(kernel: &Kernel, root: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(root);
    let download = root.join("download");
    fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    let mut apt = Command::new("apt-get");
    apt.arg("download").current_dir(&download);
    if system::is_root() {
        // apt drops to its _apt user to download, who cannot write into root's cache.
        apt.args(["-o", "APT::Sandbox::User=root"]);
    }
    run(apt.arg(kernel.package()))?;
    run(Command::new("dpkg")
        .arg("-x")
        .arg(package_file(&download)?)
        .arg(root))
}

fn package_file(dir: &Path) -> Result<PathBuf> {
    fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", dir.display()))
}

fn release_in(root: &Path) -> Result<String> {
    let modules = root.join("lib/modules");
    let mut releases: Vec<String> = fs::read_dir(&modules)
        .with_context(|| format!("reading {}", modules.display()))?
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    match releases.len() {
        1 => Ok(releases.remove(0)),
        _ => bail!(
            "expected one kernel release in {}, found {releases:?}: remove {} and run again",
            modules.display(),
            root.display()
        ),
    }
}

/// The modules (paths in the release's tree) to load, in order, for `wanted` and everything
/// they depend on; built-in ones need no loading.
fn modules_to_load(image: &Image, wanted: &[&str]) -> Result<Vec<String>> {
    let dir = image.modules.join(&image.release);
    let index = fs::read_to_string(dir.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", dir.display()))?;
    let depends: HashMap<&str, Vec<&str>> = index
        .lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            Some((module, deps.split_whitespace().collect()))
        })
        .collect();
    let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let name = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };

    fn visit<'a>(
        module: &'a str,
        depends: &HashMap<&'a str, Vec<&'a str>>,
        seen: &mut HashSet<&'a str>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(module) {
            return;
        }
        for dep in depends.get(module).into_iter().flatten() {
            visit(dep, depends, seen, order);
        }
        order.push(module.to_owned());
    }

    let mut seen = HashSet::new();
    let mut order = Vec::new();
    for wanted in wanted {
        if let Some(module) = depends.keys().find(|path| name(path) == *wanted) {
            visit(module, &depends, &mut seen, &mut order);
        } else if !builtin.lines().any(|path| name(path) == *wanted) {
            bail!(
                "kernel {} has no module {wanted}, loadable or built in",
                image.version
            );
        }
    }
    Ok(order)
}

/// A test executable, and the directory cargo would run it in (its package's).
struct TestBinary {
    name: String,
    dir: PathBuf,
    executable: PathBuf,
}

/// Builds the tests of the crates that touch the kernel; returns their executables.
fn build_tests() -> Result<Vec<TestBinary>> {
    let messages = output(
        cargo()
            .args([
                "test",
                "--package",
                "drainer",
                "--package",
                "drainer-integration",
                "--no-run",
                "--message-format=json-render-diagnostics",
            ])
            .stderr(Stdio::inherit()),
    )?;
    let mut tests = Vec::new();
    for line in messages.lines() {
        let message: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("cargo printed {line:?}"))?;
        if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
            continue;
        }
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        let target = message["target"]["name"].as_str().unwrap_or_default();
        let kind = message["target"]["kind"][0].as_str().unwrap_or_default();
        let manifest = Path::new(message["manifest_path"].as_str().unwrap_or_default());
        tests.push(TestBinary {
            name: if kind == "test" {
                target.to_owned()
            } else {
                format!("{target}-{kind}")
            },
            dir: manifest.parent().unwrap_or(Path::new("/")).to_owned(),
            executable: executable.into(),
        });
    }
    if tests.is_empty() {
        bail!("cargo test --no-run built no test executable");
    }
    tests.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tests)
}

/// The environment `cargo xtask test` gives the test binaries, as seen from inside the VM.
fn test_env(drainer: &Path, python: &Path) -> Result<Vec<(&'static str, String)>> {
    let var = |name| std::env::var(name).with_context(|| format!("{name} is not set"));
    Ok(vec![
        ("HOME", var("HOME")?),
        ("PATH", var("PATH")?),
        ("LANG", "C.UTF-8".to_owned()),
        ("RUST_BACKTRACE", "1".to_owned()),
        ("DRAINER_BIN", utf8(drainer)?.to_owned()),
        ("DRAINER_TEST_PYTHON", utf8(python)?.to_owned()),
    ])
}

/// One VM's run.
struct Plan<'a> {
    image: &'a Image,
    tests: &'a [TestBinary],
    filter: Option<&'a str>,
    env: &'a [(&'static str, String)],
}

impl Plan<'_> {
    /// /vm/plan.sh: the variables and functions vm-init.sh expects.
    fn script(&self, boot_modules: &[String]) -> Result<String> {
        let mut script = String::new();
        let files: Vec<&str> = boot_modules
            .iter()
            .map(|path| path.rsplit('/').next().unwrap_or(path))
            .collect();
        writeln!(script, "boot_modules={}", quote(&files.join(" ")))?;
        writeln!(script, "modules_dir={}", quote(utf8(&self.image.modules)?))?;
        let (soft, hard) = open_files_limit()?;
        writeln!(
            script,
            "open_files_soft={} open_files_hard={}",
            quote(&soft),
            quote(&hard)
        )?;
        script.push_str("in_host_root() {\n    /bin/busybox env -i");
        for (name, value) in self.env {
            write!(script, " {}", quote(&format!("{name}={value}")))?;
        }
        script.push_str(" /bin/busybox chroot /newroot \"$@\"\n}\n");
        script.push_str("run_tests() {\n");
        for test in self.tests {
            write!(
                script,
                "    run_test {} {} {}",
                quote(&test.name),
                quote(utf8(&test.dir)?),
                quote(utf8(&test.executable)?)
            )?;
            if let Some(filter) = self.filter {
                write!(script, " {}", quote(filter))?;
            }
            script.push('\n');
        }
        script.push_str("}\n");
        Ok(script)
    }
}

/// This process's RLIMIT_NOFILE, soft and hard, which `cargo xtask test` passes on to the tests;
/// the guest's default (1024) is too low for the tests that hold many connections.
fn open_files_limit() -> Result<(String, String)> {
    let limits = fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    let mut fields = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .context("no \"Max open files\" in /proc/self/limits")?
        .split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(soft), Some(hard)) => Ok((soft.to_owned(), hard.to_owned())),
        _ => bail!("cannot read the open files limit in /proc/self/limits"),
    }
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str().with_context(|| {
        format!(
            "{} is not UTF-8, which the VM's shell scripts need",
            path.display()
        )
    })
}

/// Writes the initramfs: busybox, vm-init.sh as /init, the boot modules and the plan.
fn write_initramfs(plan: &Plan, work: &Path) -> Result<PathBuf> {
    let staging = work.join("initramfs");
    let _ = fs::remove_dir_all(&staging);
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "lib/modules",
        "modules",
        "newroot",
        "results",
        "vm",
    ] {
        fs::create_dir_all(staging.join(dir))?;
    }
    fs::copy(BUSYBOX, staging.join("bin/busybox")).with_context(|| format!("copying {BUSYBOX}"))?;
    write_executable(&staging.join("init"), include_str!("vm-init.sh"))?;
    let boot_modules = modules_to_load(plan.image, BOOT_MODULES)?;
    let tree = plan.image.modules.join(&plan.image.release);
    for module in &boot_modules {
        let file = module.rsplit('/').next().unwrap_or(module);
        fs::copy(tree.join(module), staging.join("modules").join(file))
            .with_context(|| format!("copying {module} from {}", tree.display()))?;
    }
    fs::write(staging.join("vm/plan.sh"), plan.script(&boot_modules)?)?;

    let mut entries = Vec::new();
    list(&staging, Path::new(""), &mut entries)?;
    let archive = work.join("initramfs.cpio");
    // Not compressed: the kernel takes a plain cpio archive, and unpacking it costs nothing
    // next to decompressing under emulation.
    let mut cpio = Command::new(BUSYBOX)
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(&staging)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&archive)?)
        .stderr(Stdio::null())
        .spawn()
        .context("starting busybox cpio")?;
    let mut stdin = cpio.stdin.take().context("busybox cpio's stdin")?;
    for entry in &entries {
        writeln!(stdin, "{}", utf8(entry)?)?;
    }
    drop(stdin);
    if !cpio.wait()?.success() {
        bail!("busybox cpio failed to archive {}", staging.display());
    }
    Ok(archive)
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Every path under `root/relative`, each directory before its contents.
fn list(root: &Path, relative: &Path, entries: &mut Vec<PathBuf>) -> Result<()> {
    let mut children: Vec<_> = fs::read_dir(root.join(relative))?
        .map(|entry| entry.map(|entry| entry.file_name()))
        .collect::<Result<_, _>>()?;
    children.sort();
    for child in children {
        let path = relative.join(child);
        entries.push(path.clone());
        if root.join(&path).is_dir() {
            list(root, &path, entries)?;
        }
    }
    Ok(())
}

/// What the console shows of the guest's progress.
#[derive(Default)]
struct Console {
    booted: bool,
    running: Option<String>,
    tail: VecDeque<String>,
}

enum Outcome {
    /// The VM ran every test binary; each one's result.
    Ran(Vec<TestResult>),
    /// The VM did not boot, crashed or timed out; what had run until then.
    Broken {
        problem: String,
        results: Vec<TestResult>,
    },
}

impl Outcome {
    fn passed(&self) -> bool {
        match self {
            Outcome::Ran(results) => results.iter().all(|result| result.status == Some(0)),
            Outcome::Broken { .. } => false,
        }
    }
}

struct TestResult {
    name: String,
    /// None when the binary did not finish.
    status: Option<i32>,
    passed: usize,
    failed: Vec<String>,
}

fn boot_and_test(plan: &Plan, work: &Path, timeout: Duration) -> Result<Outcome> {
    fs::create_dir_all(work)?;
    let results = work.join("results");
    let _ = fs::remove_dir_all(&results);
    fs::create_dir_all(&results)?;
    let initramfs = write_initramfs(plan, work)?;
    let console_log = work.join("console.log");

    let mut qemu = Command::new("qemu-system-x86_64");
    // One host thread for both virtual CPUs, though that is slower: with a thread each, a CPU
    // has been seen running a breakpoint the kernel had already patched away (enabling a
    // tracepoint rewrites kernel code while the other CPU runs it), an "Oops: int3" panic.
    qemu.args(["-accel", "tcg,thread=single", "-smp", "2", "-m", "3G"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&plan.image.vmlinuz)
        .arg("-initrd")
        .arg(&initramfs)
        // mitigations=off: the emulated CPU claims the speculation bugs, and their workarounds
        // (page-table isolation on every system call) only slow the emulation down.
        // threadirqs: under emulation everything runs some 30 times slower, drainer's tracepoint
        // program too, and a softirq run on interrupt exit then often lands inside it; the
        // kernel skips that nested run (a recursion miss), the count is no longer exact, and
        // the tracking tests fail. Softirqs handed to ksoftirqd cannot nest there.
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet mitigations=off threadirqs",
        ])
        .args([
            "-virtfs",
            // multidevs=remap: / spans several host filesystems, whose inode numbers would
            // collide in the guest.
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=results,security_model=none",
            // qemu's option syntax escapes a comma by doubling it.
            utf8(&results)?.replace(',', ",,")
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    eprintln!(
        "xtask: booting {} ({}) under qemu; console in {}",
        plan.image.version,
        plan.image.package_version,
        console_log.display()
    );
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;

    let console = Arc::new(Mutex::new(Console::default()));
    let reader = {
        let stdout = child.stdout.take().context("qemu's stdout")?;
        let console = Arc::clone(&console);
        let mut log = fs::File::create(&console_log)?;
        thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                let line = printable(&String::from_utf8_lossy(&line));
                let line = line.as_str();
                let _ = writeln!(log, "{line}");
                eprintln!("{line}");
                let mut console = console.lock().unwrap();
                if let Some((_, marker)) = line.split_once("vm-test: ") {
                    if marker.starts_with("booted") {
                        console.booted = true;
                    } else if let Some(name) = marker.strip_prefix("running ") {
                        console.running = Some(name.to_owned());
                    }
                }
                if console.tail.len() == CONSOLE_TAIL {
                    console.tail.pop_front();
                }
                console.tail.push_back(line.to_owned());
            }
        })
    };

    let started = Instant::now();
    let mut stopped = None;
    let exit = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let console = console.lock().unwrap();
        if !console.booted && started.elapsed() > BOOT_TIMEOUT {
            stopped = Some(format!(
                "the VM did not boot within {} s",
                BOOT_TIMEOUT.as_secs()
            ));
        } else if started.elapsed() > timeout {
            stopped = Some(format!(
                "the tests did not finish within {} min (timed out in {})",
                timeout.as_secs() / 60,
                console.running.as_deref().unwrap_or("no test binary")
            ));
        }
        drop(console);
        if stopped.is_some() {
            child.kill().context("stopping qemu")?;
            break child.wait()?;
        }
        thread::sleep(Duration::from_secs(1));
    };
    let _ = reader.join();

    let test_results: Vec<TestResult> = plan
        .tests
        .iter()
        .filter_map(|test| read_result(&results, &test.name))
        .collect();
    let console = console.lock().unwrap();
    let problem = stopped.or_else(|| {
        (!results.join("done").exists()).then(|| {
            format!(
                "the VM stopped before every test binary had run (a setup failure, kernel panic \
                 or crash; qemu exited with {exit})"
            )
        })
    });
    Ok(match problem {
        None => Outcome::Ran(test_results),
        Some(problem) => Outcome::Broken {
            problem: format!(
                "{problem}; the console's last lines:\n{}",
                console
                    .tail
                    .iter()
                    .map(|line| format!("      | {line}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            results: test_results,
        },
    })
}

/// `line` without the terminal escape sequences the firmware writes to the serial console.
fn printable(line: &str) -> String {
    let mut text = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            // ESC c, or ESC [ parameters and a final letter.
            '\x1b' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\t' => text.push(c),
            c if c.is_control() => {}
            c => text.push(c),
        }
    }
    text
}

/// The result of the test binary `name`, if it started.
fn read_result(results: &Path, name: &str) -> Option<TestResult> {
    let log = fs::read_to_string(results.join(format!("{name}.log"))).ok()?;
    let status = fs::read_to_string(results.join(format!("{name}.status")))
        .ok()
        .and_then(|status| status.trim().parse().ok());
    let mut passed = 0;
    let mut failed = Vec::new();
    for line in log.lines() {
        let Some(test) = line.strip_prefix("test ") else {
            continue;
        };
        if test.ends_with(" ... ok") {
            passed += 1;
        } else if let Some(test) = test.strip_suffix(" ... FAILED") {
            failed.push(test.to_owned());
        }
    }
    Some(TestResult {
        name: name.to_owned(),
        status,
        passed,
        failed,
    })
}

struct Report<'a> {
    image: &'a Image,
    outcome: Outcome,
    wall: Duration,
    work: PathBuf,
}

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.outcome.passed() {
            "passed"
        } else {
            "FAILED"
        };
        writeln!(
            f,
            "  {} (Debian {}): {verdict} in {}m{:02}s; logs in {}",
            self.image.version,
            self.image.package_version,
            self.wall.as_secs() / 60,
            self.wall.as_secs() % 60,
            self.work.display()
        )?;
        let results = match &self.outcome {
            Outcome::Ran(results) => results,
            Outcome::Broken { results, .. } => results,
        };
        for result in results {
            let state = match result.status {
                Some(0) => "ok".to_owned(),
                Some(code) => format!("FAILED (exit {code})"),
                None => "did not finish".to_owned(),
            };
            write!(
                f,
                "    {:<24} {state}: {} passed",
                result.name, result.passed
            )?;
            if !result.failed.is_empty() {
                write!(
                    f,
                    ", {} failed: {}",
                    result.failed.len(),
                    result.failed.join(", ")
                )?;
            }
            writeln!(f)?;
        }
        if let Outcome::Broken { problem, .. } = &self.outcome {
            writeln!(f, "    {problem}")?;
        }
        Ok(())
    }
}
