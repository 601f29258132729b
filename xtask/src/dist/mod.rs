//! `cargo xtask dist`: what a release ships, in `target/dist/`: a static (musl) drainer, a .deb
//! of it with the docs and the example units, an OCI image archive holding only the binary, and
//! `SHA256SUMS` of the three. Each is checked after it is written.
//!
//! Everything is stamped with the time of the last commit (`SOURCE_DATE_EPOCH`), so the same
//! commit gives the same package and image contents.
use std::{
    env, fs,
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use nix::{sys::signal, unistd::Pid};
use serde_json::Value;

pub(crate) mod static_binary;

use crate::{
    cmd::{self, output, run, workspace_root},
    system,
};

/// The shipped binary's architecture, as Debian and OCI name it.
const ARCH: &str = "amd64";

/// The image's name; `podman load` and `skopeo copy` keep it, and deploy/kubernetes names it
/// with the version as its tag.
pub const IMAGE: &str = "drainer";

/// Where the binary goes, in the package and in the image. /usr/bin rather than /usr/sbin: the
/// client commands (`drainer drain --wait`, `status`) run as the users `--allow-uid` names, whose
/// PATH has no sbin on Debian.
const PACKAGED_BINARY: &str = "usr/bin/drainer";
const IMAGE_BINARY: &str = "/drainer";

/// The units in deploy/systemd/ name the binary where a hand-copied one goes; the packaged
/// copies name the packaged binary.
const UNITS_BINARY: &str = "/usr/local/bin/drainer";

const MAINTAINER: &str = "drainer maintainers <maintainers@users.noreply.b-seed-1d176e41.example>";

/// The long description of the package, in lines of under 80 characters ("." is an empty one).
const LONG_DESCRIPTION: &[&str] = &[
    "drainer sits between a server's stop signal and the server. On SIGTERM it",
    "refuses new connections to the ports it guards with a reset (an eBPF",
    "sk_lookup program), counts the established ones down as they close (a BTF",
    "tracepoint), and passes the signal on once none is left or a deadline",
    "passes. `drainer run` starts the server itself; `drainer daemon` guards one",
    "started elsewhere (a systemd companion, a Kubernetes sidecar).",
    ".",
    "The binary is static and embeds its eBPF programs. It needs Linux 5.15 or",
    "later and CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON.",
];

/// lintian takes a static PIE executable for a shared library, which it is not.
const LINTIAN_OVERRIDES: &str = "drainer: shared-library-lacks-prerequisites [usr/bin/drainer]\n";

/// What `./x dist` wrote, each file checked.
pub struct Artifacts {
    /// The static binary: `target/dist/drainer`.
    pub binary: PathBuf,
    /// `target/dist/drainer_<version>_amd64.deb`: `apt install` it.
    pub deb: PathBuf,
    /// `target/dist/drainer-<version>.oci.tar`: `podman load -i` it, or `skopeo copy` it to a
    /// registry.
    pub image_archive: PathBuf,
    /// The name the archive gives the image: `drainer:<version>` (`localhost/drainer:<version>`
    /// once podman has loaded it).
    pub image: String,
    /// `target/dist/SHA256SUMS`, of the three files above.
    pub sums: PathBuf,
}

/// Builds, checks and describes what a release ships.
pub fn dist() -> Result<Artifacts> {
    if !system::is_root() {
        bail!(
            "`./x dist` installs Debian packages, starts the binary it built (which loads eBPF \
             programs) and builds the image in storage of its own as root: run `sudo ./x dist` \
             (or as root)"
        );
    }
    system::ensure_debian_packages(&["buildah", "skopeo", "file"])?;
    let release = Release::find()?;
    let target = cmd::target_dir()?;
    let out = target.join("dist");
    let work = target.join("dist-work");
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    fs::create_dir_all(&out)?;
    fs::create_dir_all(&work)?;

    let binary = out.join("drainer");
    static_binary::build(&work, &binary)?;
    smoke_test(&binary, &work)?;
    let deb = out.join(format!("drainer_{}_{ARCH}.deb", release.version));
    build_deb(&release, &binary, &work, &deb)?;
    let image = format!("{IMAGE}:{}", release.version);
    let image_archive = out.join(format!("drainer-{}.oci.tar", release.version));
    build_image(&release, &binary, &work, &image_archive, &image)?;
    let sums = out.join("SHA256SUMS");
    let artifacts = Artifacts {
        binary,
        deb,
        image_archive,
        image,
        sums,
    };
    write_sums(&artifacts)?;

    check(&artifacts, &release, &work)?;
    for line in describe(&artifacts)? {
        println!("{line}");
    }
    Ok(artifacts)
}

/// What the artifacts are stamped with.
struct Release {
    version: String,
    description: String,
    license: String,
    /// The commit built, for the image's revision label.
    revision: String,
    /// `SOURCE_DATE_EPOCH`: given, or the last commit's time.
    epoch: String,
}

impl Release {
    fn find() -> Result<Self> {
        let metadata = cmd::metadata()
            .no_deps()
            .exec()
            .context("asking cargo about drainer's package")?;
        let drainer = metadata
            .packages
            .into_iter()
            .find(|package| package.name.as_str() == "drainer")
            .context("cargo metadata names no package drainer")?;
        let git = |args: &[&str]| {
            output(Command::new("git").args(args).current_dir(workspace_root()))
                .map(|out| out.trim().to_owned())
                .context("the artifacts are stamped from git: run `./x dist` in a git checkout")
        };
        let epoch = match env::var("SOURCE_DATE_EPOCH") {
            Ok(epoch) => epoch,
            Err(_) => git(&["log", "-1", "--format=%ct"])?,
        };
        Ok(Self {
            version: drainer.version.to_string(),
            description: drainer
                .description
                .context("drainer/Cargo.toml has no description, which the package needs")?,
            license: drainer
                .license
                .context("drainer/Cargo.toml has no license, which the image labels")?,
            revision: git(&["rev-parse", "HEAD"])?,
            epoch,
        })
    }
}

/// Checks that the static binary really runs, not only links: its help, then (as root) a daemon
/// on port 1 that loads its programs, serves its control socket through io_uring, answers
/// `drainer status`, and on SIGTERM attaches, drains nothing and exits 0.
fn smoke_test(binary: &Path, work: &Path) -> Result<()> {
    output(Command::new(binary).arg("--help"))?;
    let socket = work.join("smoke-test.sock");
    let _ = fs::remove_file(&socket);
    let mut command = Command::new(binary);
    command
        .args(["daemon", "--port", "1", "--control-socket"])
        .arg(&socket)
        .stderr(Stdio::piped());
    eprintln!("xtask: smoke test: {command:?}");
    let mut daemon = Daemon(command.spawn().context("cannot start the static drainer")?);
    let stderr = daemon.0.stderr.take().context("stderr was not piped")?;
    let (lines, logged) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("  {line}");
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match logged.recv_timeout(left) {
            Ok(line) if line.contains("control socket") => break,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("the static drainer daemon logged no control socket within 30 s")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                "the static drainer daemon exited before it served its control socket ({}); its \
                 log is above",
                daemon.0.wait()?
            ),
        }
    }
    let status = output(
        Command::new(binary)
            .args(["status", "--socket"])
            .arg(&socket),
    )?;
    ensure!(
        status.contains("state: serving"),
        "the static drainer's `status` did not say it serves:\n{status}"
    );
    let pid = Pid::from_raw(i32::try_from(daemon.0.id())?);
    signal::kill(pid, signal::Signal::SIGTERM)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = daemon.0.try_wait()? {
            break exit;
        }
        ensure!(
            Instant::now() < deadline,
            "the static drainer daemon did not exit within 10 s of SIGTERM"
        );
        thread::sleep(Duration::from_millis(20));
    };
    ensure!(
        exit.success(),
        "the static drainer daemon ended with {exit} after SIGTERM; its log is above"
    );
    let _ = fs::remove_file(&socket);
    Ok(())
}

/// The smoke test's daemon, killed if the test fails before it exits.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Stages the package's tree and builds it with dpkg-deb.
fn build_deb(release: &Release, binary: &Path, work: &Path, deb: &Path) -> Result<()> {
    let root = work.join("deb");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    let docs = Path::new("usr/share/doc/drainer");
    let repo = workspace_root();
    put(&root, Path::new(PACKAGED_BINARY), &fs::read(binary)?, 0o755)?;
    // The units are examples: each names port 8000 and an example app, for the operator to copy
    // and edit (docs/systemd.md); none is installed as a unit.
    for unit in files_in(&repo.join("deploy/systemd"), "service")? {
        let text = fs::read_to_string(&unit)?.replace(UNITS_BINARY, &format!("/{PACKAGED_BINARY}"));
        let name = unit.file_name().context("a unit without a name")?;
        put(
            &root,
            &docs.join("examples/systemd").join(name),
            text.as_bytes(),
            0o644,
        )?;
    }
    put(
        &root,
        &docs.join("copyright"),
        &fs::read(repo.join("deploy/debian/copyright"))?,
        0o644,
    )?;
    put(
        &root,
        &docs.join("README.md"),
        &fs::read(repo.join("README.md"))?,
        0o644,
    )?;
    put(
        &root,
        &docs.join("changelog.gz"),
        &changelog(release)?,
        0o644,
    )?;
    put(
        &root,
        Path::new("usr/share/lintian/overrides/drainer"),
        LINTIAN_OVERRIDES.as_bytes(),
        0o644,
    )?;
    // In docs/, as in the repository, so that the README's links to them hold.
    for doc in files_in(&repo.join("docs"), "md")? {
        let name = doc.file_name().context("a doc without a name")?;
        put(
            &root,
            &docs.join("docs").join(name),
            &fs::read(&doc)?,
            0o644,
        )?;
    }

    let installed_kib = installed_size_kib(&root)?;
    let control = format!(
        "Package: drainer\n\
         Version: {version}\n\
         Architecture: {ARCH}\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\n\
         Section: net\n\
         Priority: optional\n\
         Description: {description}\n \
         {long}\n",
        version = release.version,
        description = release.description,
        long = LONG_DESCRIPTION.join("\n "),
    );
    put(
        &root,
        Path::new("DEBIAN/control"),
        control.as_bytes(),
        0o644,
    )?;
    run(Command::new("dpkg-deb")
        .stdout(io::stderr())
        .args(["--build", "--root-owner-group"])
        .arg(&root)
        .arg(deb)
        .env("SOURCE_DATE_EPOCH", &release.epoch))
}

/// The changelog Debian policy asks of a package, one entry for this release, gzipped as policy
/// says (with no file name or time in gzip's header, so the same commit gives the same file).
fn changelog(release: &Release) -> Result<Vec<u8>> {
    let date = output(
        Command::new("date")
            .args(["--utc", "--rfc-email", "--date"])
            .arg(format!("@{}", release.epoch)),
    )?;
    let text = format!(
        "drainer ({version}) unstable; urgency=medium\n\
         \n\
         \x20 * drainer {version}, built by `cargo xtask dist`\n\
         \x20   from commit {revision}.\n\
         \n\
         \x20-- {MAINTAINER}  {date}\n",
        version = release.version,
        revision = release.revision,
        date = date.trim(),
    );
    let mut gzip = Command::new("gzip");
    gzip.args(["-9", "--no-name"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = gzip.spawn().context("cannot start gzip")?;
    child
        .stdin
        .take()
        .context("gzip's stdin was not piped")?
        .write_all(text.as_bytes())?;
    let compressed = child.wait_with_output()?;
    ensure!(
        compressed.status.success(),
        "gzip failed: {}",
        compressed.status
    );
    Ok(compressed.stdout)
}

/// The files of `dir` ending in `.extension`, sorted.
fn files_in(dir: &Path, extension: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == extension) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Writes `contents` to `root/path` with `mode`, creating its directories with mode 0755
/// whatever the umask.
fn put(root: &Path, path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let file = root.join(path);
    let dir = file.parent().context("a file without a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for dir in dir.ancestors().take_while(|dir| dir.starts_with(root)) {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    }
    fs::write(&file, contents).with_context(|| format!("writing {}", file.display()))?;
    fs::set_permissions(&file, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The package's Installed-Size, as dpkg-gencontrol counts it: KiB per file, rounded up, and
/// one per directory.
fn installed_size_kib(dir: &Path) -> Result<u64> {
    let mut kib = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let metadata = entry.metadata()?;
        kib += if metadata.is_dir() {
            1 + installed_size_kib(&entry.path())?
        } else {
            metadata.len().div_ceil(1024)
        };
    }
    Ok(kib)
}

/// Builds an image of the binary alone, from scratch, with buildah in storage of its own under
/// `work` (removed afterwards), and writes it as an OCI archive.
fn build_image(
    release: &Release,
    binary: &Path,
    work: &Path,
    archive: &Path,
    image: &str,
) -> Result<()> {
    let storage = work.join("containers");
    if storage.exists() {
        fs::remove_dir_all(&storage)?;
    }
    let buildah = || {
        let mut buildah = Command::new("buildah");
        // Its container and image ids would mix with the report on stdout.
        buildah
            .stdout(io::stderr())
            .arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args(["--storage-driver", "vfs"]);
        buildah
    };
    let cache = ImplicitCache::note();
    let container = format!("drainer-dist-{}", std::process::id());
    run(buildah().args(["from", "--name", &container, "scratch"]))?;
    let built = (|| {
        run(buildah()
            .args(["copy", "--chmod", "0755", &container])
            .arg(binary)
            .arg(IMAGE_BINARY))?;
        let labels = [
            ("title", "drainer"),
            ("description", &release.description),
            ("version", &release.version),
            ("revision", &release.revision),
            ("licenses", &release.license),
        ];
        let mut config = buildah();
        config
            .arg("config")
            .args(["--entrypoint", &format!("[\"{IMAGE_BINARY}\"]")])
            .args(["--cmd", "[\"--help\"]", "--os", "linux", "--arch", ARCH])
            .args([
                "--created-by",
                "cargo xtask dist: the static drainer at /drainer",
            ]);
        for (key, value) in labels {
            config
                .arg("--label")
                .arg(format!("org.opencontainers.image.{key}={value}"));
        }
        run(config.arg(&container))?;
        let archive = archive
            .to_str()
            .with_context(|| format!("{} is not UTF-8", archive.display()))?;
        run(buildah()
            .args(["commit", "--format", "oci", "--disable-compression=false"])
            .args(["--timestamp", &release.epoch])
            .arg(&container)
            .arg(format!("oci-archive:{archive}:{image}")))
    })();
    let removed = run(buildah().args(["rm", &container]));
    cache.remove_created();
    built?;
    removed?;
    fs::remove_dir_all(&storage)
        .with_context(|| format!("removing buildah's storage {}", storage.display()))
}

/// containers/image, under buildah, records blob digests in root's default cache whatever
/// `--root` says, and has no flag to move it: what a build creates there is removed after it.
struct ImplicitCache {
    /// The paths down to the cache file that did not exist before, file last.
    created: Vec<PathBuf>,
}

impl ImplicitCache {
    const FILE: &str = "/var/lib/containers/cache/blob-info-cache-v1.boltdb";

    fn note() -> Self {
        let mut created: Vec<PathBuf> = Path::new(Self::FILE)
            .ancestors()
            .take_while(|path| !path.exists())
            .map(Path::to_path_buf)
            .collect();
        created.reverse();
        Self { created }
    }

    /// Removes what `note` found missing, deepest first; a directory someone else has put
    /// something in since stays.
    fn remove_created(self) {
        for path in self.created.iter().rev() {
            let _ = if path.is_dir() {
                fs::remove_dir(path)
            } else {
                fs::remove_file(path)
            };
        }
    }
}

/// Writes SHA256SUMS in the form `sha256sum -c` reads, with names relative to its directory.
fn write_sums(artifacts: &Artifacts) -> Result<()> {
    let dir = artifacts
        .sums
        .parent()
        .context("SHA256SUMS has no directory")?;
    let mut sums = Command::new("sha256sum");
    sums.current_dir(dir);
    for file in [&artifacts.binary, &artifacts.deb, &artifacts.image_archive] {
        sums.arg(file.file_name().context("an artifact without a name")?);
    }
    fs::write(&artifacts.sums, output(&mut sums)?)?;
    Ok(())
}

/// Checks what was written: a static binary; a package holding the binary, executable, and the
/// units; an image of one layer, the binary alone, with its entrypoint and version; sums that
/// verify.
fn check(artifacts: &Artifacts, release: &Release, work: &Path) -> Result<()> {
    let file = output(Command::new("file").arg("--brief").arg(&artifacts.binary))?;
    ensure!(
        (file.contains("statically linked") || file.contains("static-pie linked"))
            && !file.contains("interpreter"),
        "{} is not a static executable: {file}",
        artifacts.binary.display()
    );

    let contents = output(
        Command::new("dpkg-deb")
            .arg("--contents")
            .arg(&artifacts.deb),
    )?;
    // Every entry root's: the binary 0755, directories 0755, every other file 0644.
    let mut paths = Vec::new();
    for line in contents.lines() {
        let mut fields = line.split_whitespace();
        let (Some(mode), Some(owner), Some(path)) = (fields.next(), fields.next(), fields.last())
        else {
            bail!("dpkg-deb --contents printed an unexpected line: {line}");
        };
        let path = path.trim_start_matches("./");
        let expected = if path == PACKAGED_BINARY {
            "-rwxr-xr-x"
        } else if mode.starts_with('d') {
            "drwxr-xr-x"
        } else {
            "-rw-r--r--"
        };
        ensure!(
            mode == expected && owner == "root/root",
            "{}: {path} must be root's with mode {expected}: {line}",
            artifacts.deb.display()
        );
        paths.push(path);
    }
    let mut needed = vec![
        PACKAGED_BINARY.to_owned(),
        "usr/share/doc/drainer/copyright".to_owned(),
    ];
    for unit in files_in(&workspace_root().join("deploy/systemd"), "service")? {
        let name = unit.file_name().and_then(|name| name.to_str());
        let name = name.context("a unit whose name is not UTF-8")?;
        needed.push(format!("usr/share/doc/drainer/examples/systemd/{name}"));
    }
    for path in needed {
        ensure!(
            paths.contains(&path.as_str()),
            "{} holds no {path}",
            artifacts.deb.display()
        );
    }
    let version = output(
        Command::new("dpkg-deb")
            .args(["--field"])
            .arg(&artifacts.deb)
            .arg("Version"),
    )?;
    ensure!(
        version.trim() == release.version,
        "{} has version {version}, not drainer's {}",
        artifacts.deb.display(),
        release.version
    );

    check_image(artifacts, release, work)?;

    let dir = artifacts
        .sums
        .parent()
        .context("SHA256SUMS has no directory")?;
    output(
        Command::new("sha256sum")
            .args(["--check", "--strict", "SHA256SUMS"])
            .current_dir(dir),
    )?;
    Ok(())
}

/// The image: one layer holding `/drainer` alone, the entrypoint, the version label.
fn check_image(artifacts: &Artifacts, release: &Release, work: &Path) -> Result<()> {
    let archive = artifacts
        .image_archive
        .to_str()
        .context("the archive's path is not UTF-8")?;
    let inspect = |config: bool| -> Result<Value> {
        let mut skopeo = Command::new("skopeo");
        skopeo.arg("inspect");
        if config {
            skopeo.arg("--config");
        }
        let json = output(skopeo.arg(format!("oci-archive:{archive}")))?;
        serde_json::from_str(&json).context("reading skopeo inspect's JSON")
    };
    let image = inspect(false)?;
    let layers = image["Layers"]
        .as_array()
        .context("skopeo inspect lists no Layers")?;
    ensure!(
        layers.len() == 1,
        "{archive}: expected one layer, found {}",
        layers.len()
    );
    let label = &image["Labels"]["org.opencontainers.image.version"];
    ensure!(
        label.as_str() == Some(release.version.as_str()),
        "{archive}: the version label is {label}, not {}",
        release.version
    );
    let config = inspect(true)?;
    let entrypoint = &config["config"]["Entrypoint"];
    ensure!(
        *entrypoint == serde_json::json!([IMAGE_BINARY]),
        "{archive}: the entrypoint is {entrypoint}, not [\"{IMAGE_BINARY}\"]"
    );

    // The layer is a tar in the archive's blobs/: list it.
    let layer = layers[0]
        .as_str()
        .and_then(|digest| digest.strip_prefix("sha256:"))
        .context("the layer's digest is not sha256:…")?;
    let blob = format!("blobs/sha256/{layer}");
    let unpacked = work.join("layer");
    fs::create_dir_all(&unpacked)?;
    let listed = run(Command::new("tar")
        .arg("--extract")
        .arg("--file")
        .arg(&artifacts.image_archive)
        .arg("--directory")
        .arg(&unpacked)
        .arg(&blob))
    .and_then(|()| {
        output(
            Command::new("tar")
                .arg("--list")
                .arg("--file")
                .arg(unpacked.join(&blob)),
        )
    });
    fs::remove_dir_all(&unpacked)?;
    let listed = listed?;
    let files: Vec<&str> = listed
        .lines()
        .map(|line| line.trim_start_matches("./").trim_end_matches('/'))
        .filter(|line| !line.is_empty())
        .collect();
    ensure!(
        files == [IMAGE_BINARY.trim_start_matches('/')],
        "{archive}: the layer must hold {IMAGE_BINARY} alone, it holds {files:?}"
    );
    Ok(())
}

/// One line per artifact: its path, size and SHA-256.
fn describe(artifacts: &Artifacts) -> Result<Vec<String>> {
    let sums = fs::read_to_string(&artifacts.sums)?;
    let sum = |path: &Path| {
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("");
        sums.lines()
            .find_map(|line| line.strip_suffix(name)?.strip_suffix("  "))
            .map(str::to_owned)
            .with_context(|| format!("SHA256SUMS has no line for {name}"))
    };
    let mut lines = Vec::new();
    for (path, what) in [
        (&artifacts.binary, "static binary".to_owned()),
        (&artifacts.deb, "Debian package".to_owned()),
        (
            &artifacts.image_archive,
            format!("OCI image {}", artifacts.image),
        ),
    ] {
        let bytes = fs::metadata(path)?.len();
        let mib = bytes as f64 / f64::from(1 << 20);
        lines.push(format!(
            "{}  {mib:.1} MiB ({bytes} bytes)  sha256 {}  {what}",
            path.display(),
            sum(path)?
        ));
    }
    lines.push(format!("{}  checks the three", artifacts.sums.display()));
    Ok(lines)
}
