//! A kernel package downloaded with apt-get and unpacked once, into
//! `~/.cache/drainer/kernels/<version>/`: its vmlinuz, and its modules indexed with busybox's
//! depmod so the guest can load them.
use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{BUSYBOX, kernels::Kernel};
use crate::{
    cmd::{output, run},
    system,
};

/// A kernel package unpacked in the cache, its modules indexed.
pub(super) struct Image {
    pub(super) version: String,
    /// The Debian package's version, which names the upstream release: 6.1.192-3.
    pub(super) package_version: String,
    pub(super) vmlinuz: PathBuf,
    /// `lib/modules` of the package, holding one `<release>/` directory.
    pub(super) modules: PathBuf,
    /// The kernel's release, `uname -r` in the guest: 6.1.0-57-amd64.
    pub(super) release: String,
}

pub(super) fn fetch(kernel: &Kernel) -> Result<Image> {
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
pub(super) fn modules_to_load(image: &Image, wanted: &[&str]) -> Result<Vec<String>> {
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
