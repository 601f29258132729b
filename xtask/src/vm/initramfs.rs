//! The initramfs the guest boots from: busybox, `init.sh` as /init, the modules it loads before it
//! can mount the host's root, and the plan of the run (which binaries, with which environment).
use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, rlim_t};

use super::{
    BUSYBOX,
    binaries::TestBinary,
    image::{Image, modules_to_load},
    patience::{BINARY_BUDGET, REFERENCE_IMPORTS, Reference},
    utf8,
};

/// What the guest must load before it can mount the host's root; the rest load on demand.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// One VM's run.
pub(super) struct Plan<'a> {
    pub(super) image: &'a Image,
    pub(super) tests: &'a [TestBinary],
    pub(super) filter: Option<&'a str>,
    pub(super) env: &'a [(&'static str, String)],
    pub(super) reference: &'a Reference,
}

impl Plan<'_> {
    /// /vm/plan.sh: the variables and functions init.sh expects.
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
        // init.sh sets $patience once it has timed the reference.
        script.push_str("in_host_root() {\n    /bin/busybox env -i");
        for (name, value) in self.env {
            write!(script, " {}", quote(&format!("{name}={value}")))?;
        }
        script.push_str(
            " \"DRAINER_TEST_PATIENCE=$patience\" /bin/busybox chroot /newroot \"$@\"\n}\n",
        );
        writeln!(
            script,
            "reference_host_cs={}",
            (self.reference.host.as_millis() / 10).max(1)
        )?;
        writeln!(
            script,
            "reference() {{\n    in_host_root {} -c {}\n}}",
            quote(utf8(&self.reference.python)?),
            quote(REFERENCE_IMPORTS)
        )?;
        writeln!(script, "binary_budget_s={}", BINARY_BUDGET.as_secs())?;
        writeln!(
            script,
            "patience_given={}",
            quote(
                &self
                    .reference
                    .given
                    .map(|factor| factor.to_string())
                    .unwrap_or_default()
            )
        )?;
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

/// This process's RLIMIT_NOFILE, soft and hard, as `ulimit -n` takes them, which
/// `cargo xtask test` passes on to the tests; the guest's default (1024) is too low for the tests
/// that hold many connections.
fn open_files_limit() -> Result<(String, String)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    let show = |limit: rlim_t| {
        if limit == RLIM_INFINITY {
            "unlimited".to_owned()
        } else {
            limit.to_string()
        }
    };
    Ok((show(soft), show(hard)))
}

/// `text` as one shell word.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Writes the initramfs: busybox, init.sh as /init, the boot modules and the plan; returns its
/// path.
pub(super) fn write(plan: &Plan, work: &Path) -> Result<PathBuf> {
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
    write_executable(&staging.join("init"), include_str!("init.sh"))?;
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
