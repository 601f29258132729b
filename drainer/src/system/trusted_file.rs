//! Files whose contents decide what drainer does with its privileges: the HTTP token (who may
//! start a drain), a pidfile (whom the release signals). Such a file is trusted only as far as
//! who can change it: a regular file (not reached through a symbolic link, which whoever owns the
//! link could repoint), owned by root or by the user drainer runs as, that its group and others
//! cannot change (or, for a secret, read either).
use std::{
    fs::{File, Metadata, OpenOptions},
    io::ErrorKind,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::unistd::geteuid;

/// What a trusted file is and what it controls, for the errors that refuse one.
pub struct Trust<'a> {
    /// "the pidfile": how the errors name the file.
    pub what: &'a str,
    /// "whom drainer signals": what whoever can change it would control.
    pub controls: &'a str,
    /// The mode bits its group and others must not hold.
    pub forbidden_mode: u32,
    /// How those bits read in the error: "writable", "readable or writable".
    pub forbidden_access: &'a str,
    /// The chmod that fixes it: "chmod go-w".
    pub chmod: &'a str,
    /// Added to the symbolic-link error: where such a link usually comes from.
    pub link_hint: &'a str,
}

/// Opens `path` for reading as `trust` requires and checks it; returns it with its attributes.
pub fn open(path: &Path, trust: &Trust) -> Result<(File, Metadata)> {
    let Trust { what, controls, .. } = trust;
    let shown = path.display();
    // O_NONBLOCK: a FIFO at the path must not hang drainer before it is refused below.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| match err.raw_os_error() {
            Some(libc::ELOOP) => anyhow!(
                "{what} {shown} is a symbolic link: drainer does not follow it (whoever can \
                 change the link would choose {controls}); give the file's own path{}",
                trust.link_hint
            ),
            _ if err.kind() == ErrorKind::NotFound => anyhow!("{what} {shown} does not exist"),
            _ => anyhow!(err).context(format!("opening {what} {shown}")),
        })?;
    let meta = file
        .metadata()
        .with_context(|| format!("reading the attributes of {what} {shown}"))?;
    if !meta.file_type().is_file() {
        bail!("{what} {shown} is not a regular file");
    }
    let euid = geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        let owners = if euid == 0 {
            "root".to_owned()
        } else {
            format!("root or uid {euid} (drainer's)")
        };
        bail!(
            "{what} {shown} is owned by uid {}: drainer trusts it only when owned by {owners}, \
             since its owner chooses {controls}; `chown root {shown}`",
            meta.uid()
        );
    }
    if meta.mode() & trust.forbidden_mode != 0 {
        bail!(
            "{what} {shown} is {} by its group or others (mode {:04o}): whoever can change it \
             chooses {controls}; `{} {shown}`",
            trust.forbidden_access,
            meta.mode() & 0o7777,
            trust.chmod
        );
    }
    Ok((file, meta))
}
