//! The guest's disk: a Debian bookworm root filesystem built from Debian's archive with
//! mmdebstrap, made into a raw ext4 image, with the kernel and initramfs Debian's own kernel
//! package generated in it copied out beside it so qemu can boot them directly.
//!
//! Kept in `~/.cache/drainer/vm-deploy/bookworm-<key>/`, where the key hashes everything that goes
//! in (the package lists, the files written into the image and [`IMAGE_VERSION`]): it is built
//! once (about two minutes here) and again only when one of those changes. Runs boot a qcow2
//! overlay of it, so the cached image stays as built.
use std::{
    fs,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{output, run},
    system,
};

/// Raise to rebuild the image when something about it changes that the key cannot see (the way
/// it is built).
const IMAGE_VERSION: u32 = 2;
const SUITE: &str = "bookworm";

/// The guest: systemd as PID 1, a kernel with its initramfs (virtio drivers are modules), the
/// Python WebSocket server and clients of the scenarios, and podman with the runtime, monitor,
/// network stack and init its pods use.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "linux-image-amd64",
    "initramfs-tools",
    "iproute2",
    // `kill`, which the wrapper unit's ExecReload runs (Debian installs it everywhere but in
    // images as bare as this one).
    "procps",
    "python3",
    "python3-websockets",
    // The pod scenario reads the security context and arguments from the manifest itself.
    "python3-yaml",
    "curl",
    "podman",
    "crun",
    "conmon",
    "catatonit",
    "netavark",
    "aardvark-dns",
    "iptables",
    "golang-github-containers-common",
];

/// The app container's root filesystem (podman imports it in the guest): the WebSocket server's
/// interpreter and library, from the same archive.
const APP_PACKAGES: &[&str] = &["python3", "python3-websockets"];

/// Where the guest finds the packages `cargo xtask packages` installs, and their dependencies, as
/// a local apt repository: the guest has no network, and the packages scenario runs that step
/// there as a user's machine would.
pub(super) const PACKAGES_IN_GUEST: &str = "/srv/packages";

/// Where the guest finds the app container's root filesystem, as a tar archive.
pub(super) const APP_ROOTFS_IN_GUEST: &str = "/srv/images/app-rootfs.tar";

/// The unit that runs the scenarios once the guest has booted.
const RUN_UNIT: (&str, &str) = (
    "vm-deploy-run.service",
    include_str!("guest/vm-deploy-run.service"),
);

/// The host's share with the run's scripts, artifacts and results (qemu's 9p tag `vm`).
const FSTAB: &str = "vm /srv/vm 9p trans=virtio,version=9p2000.L,msize=262144,nofail 0 0\n";

/// Units that would only slow the emulated boot or write to the console: timers of a long-lived
/// machine, podman's API socket and auto-updates, and the login prompts.
const MASKED: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "logrotate.timer",
    "systemd-tmpfiles-clean.timer",
    "podman.socket",
    "podman-auto-update.timer",
    "podman-restart.service",
    "serial-getty@ttyS0.service",
    "getty@tty1.service",
];

/// Room for what the scenarios add: the imported and built container images, logs.
const FREE_SPACE_MIB: u64 = 2048;

/// The cached image.
pub(super) struct Image {
    pub(super) disk: PathBuf,
    pub(super) vmlinuz: PathBuf,
    pub(super) initrd: PathBuf,
    /// The cache directory's name, which says what went in.
    pub(super) name: String,
}

fn key() -> String {
    let mut hasher = DefaultHasher::new();
    (
        IMAGE_VERSION,
        SUITE,
        PACKAGES,
        APP_PACKAGES,
        APP_ROOTFS_IN_GUEST,
        crate::TEST_PACKAGES,
        PACKAGES_IN_GUEST,
        RUN_UNIT,
        FSTAB,
        MASKED,
        FREE_SPACE_MIB,
    )
        .hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// The image for the current package lists, built first if the cache has none.
pub(super) fn ensure() -> Result<Image> {
    system::ensure_packages(&[
        ("mmdebstrap", "mmdebstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("qemu-img", "qemu-utils"),
        ("apt-ftparchive", "apt-utils"),
    ])?;
    let name = format!("{SUITE}-{}", key());
    let dir = system::cache_dir()?.join("vm-deploy").join(&name);
    let complete = dir.join(".complete");
    if !complete.exists() {
        eprintln!(
            "xtask: building the guest image {name} from Debian's archive into {}",
            dir.display()
        );
        build(&dir)?;
        fs::write(&complete, "")?;
        remove_other_images(&dir)?;
    }
    Ok(Image {
        disk: dir.join("root.ext4"),
        vmlinuz: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        name,
    })
}

/// Images of earlier package lists, which no run boots again: a few GiB each.
fn remove_other_images(current: &Path) -> Result<()> {
    let Some(cache) = current.parent() else {
        return Ok(());
    };
    for entry in fs::read_dir(cache).with_context(|| format!("reading {}", cache.display()))? {
        let path = entry?.path();
        if path != current && path.is_dir() {
            eprintln!(
                "xtask: removing the outdated guest image {}",
                path.display()
            );
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

fn build(dir: &Path) -> Result<()> {
    system::require_root("building the guest image", "vm-deploy")?;
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let root = dir.join("root");
    fs::create_dir_all(dir)?;
    let repository = format!("\"$1\"{PACKAGES_IN_GUEST}");
    let test_packages: Vec<&str> = crate::TEST_PACKAGES.iter().map(|(_, p)| *p).collect();
    run(Command::new("mmdebstrap")
        .args(["--variant=apt", "--quiet"])
        .arg(format!("--include={}", PACKAGES.join(",")))
        // Downloaded with the image's own apt, against what the image holds: the packages and
        // the dependencies the guest lacks, in a directory of their own.
        .arg(format!("--customize-hook=mkdir -p {repository}/partial"))
        .arg(format!(
            "--customize-hook=APT_CONFIG=\"$MMDEBSTRAP_APT_CONFIG\" apt-get --yes --quiet \
             --no-install-recommends --download-only -o Dir::Cache::Archives={repository}/ \
             install {}",
            test_packages.join(" ")
        ))
        .arg(format!(
            "--customize-hook=rm -rf {repository}/partial {repository}/lock"
        ))
        .arg(SUITE)
        .arg(&root))
    .context("building the guest's root filesystem from Debian's archive")?;
    index_repository(&root.join(PACKAGES_IN_GUEST.trim_start_matches('/')))?;
    let images = root.join(APP_ROOTFS_IN_GUEST.trim_start_matches('/'));
    fs::create_dir_all(images.parent().context("the app archive's directory")?)?;
    run(Command::new("mmdebstrap")
        .args(["--variant=minbase", "--quiet"])
        .arg(format!("--include={}", APP_PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&images))
    .context("building the app container's root filesystem from Debian's archive")?;
    customize(&root)?;

    let boot = root.join("boot");
    fs::copy(only_file(&boot, "vmlinuz-")?, dir.join("vmlinuz"))?;
    fs::copy(only_file(&boot, "initrd.img-")?, dir.join("initrd.img"))?;

    let used_mib: u64 = output(Command::new("du").args(["-s", "-B1M"]).arg(&root))?
        .split_whitespace()
        .next()
        .and_then(|size| size.parse().ok())
        .context("reading du's size of the root filesystem")?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-d"])
        .arg(&root)
        .arg(dir.join("root.ext4"))
        .arg(format!("{}M", used_mib + used_mib / 4 + FREE_SPACE_MIB)))?;
    fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))
}

/// Makes the downloaded packages in `dir` a flat apt repository (`deb [trusted=yes] file:DIR ./`).
fn index_repository(dir: &Path) -> Result<()> {
    for (index, what) in [("Packages", "packages"), ("Release", "release")] {
        let text = output(
            Command::new("apt-ftparchive")
                .args([what, "."])
                .current_dir(dir),
        )
        .with_context(|| format!("indexing the packages in {}", dir.display()))?;
        fs::write(dir.join(index), text)?;
    }
    Ok(())
}

/// The guest's own configuration: the share mounted, the run unit enabled, the rest masked.
fn customize(root: &Path) -> Result<()> {
    let units = root.join("etc/systemd/system");
    let (name, text) = RUN_UNIT;
    fs::write(units.join(name), text)?;
    let wants = units.join("multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    symlink(format!("/etc/systemd/system/{name}"), wants.join(name))?;
    for unit in MASKED {
        let path = units.join(unit);
        let _ = fs::remove_file(&path);
        symlink("/dev/null", &path).with_context(|| format!("masking {unit}"))?;
    }
    fs::create_dir_all(root.join("srv/vm"))?;
    let fstab = root.join("etc/fstab");
    let mut table = fs::read_to_string(&fstab).unwrap_or_default();
    table.push_str(FSTAB);
    fs::write(&fstab, table)?;
    fs::write(root.join("etc/hostname"), "drainer-vm\n")?;
    Ok(())
}

/// The one file in `dir` whose name starts with `prefix`.
fn only_file(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let found: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .map(|entry| entry.path())
        .collect();
    match <[PathBuf; 1]>::try_from(found) {
        Ok([file]) => Ok(file),
        Err(found) => bail!(
            "expected one {prefix}* in the image's {}, found {found:?}: the kernel package did \
             not install as expected",
            dir.display()
        ),
    }
}
