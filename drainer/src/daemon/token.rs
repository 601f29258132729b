//! The HTTP drain endpoint's bearer token (`--http-token-file`). Whoever holds it can start a
//! drain, so drainer takes it only from a regular file that no one but its owner (root, or the
//! user drainer runs as) can read or write, opened without following a symlink.
use std::{
    fs::{File, OpenOptions},
    io::{ErrorKind, Read as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::Path,
};

use anyhow::{Context as _, Result, bail};

/// The shortest token accepted.
const MIN_LENGTH: usize = 16;

pub fn read(path: &Path) -> Result<String> {
    let shown = path.display();
    // O_NONBLOCK: a FIFO at the path must not hang start-up before it is refused below.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| match err.raw_os_error() {
            Some(libc::ELOOP) => anyhow::anyhow!(
                "the HTTP token file {shown} is a symbolic link: drainer does not follow one \
                 there; give the file itself (from a Kubernetes Secret volume, mount the key \
                 with subPath)"
            ),
            _ if err.kind() == ErrorKind::NotFound => {
                anyhow::anyhow!("the HTTP token file {shown} does not exist")
            }
            _ => anyhow::Error::new(err).context(format!("opening the HTTP token file {shown}")),
        })?;
    check(&file, path)?;
    let mut token = String::new();
    (&file)
        .read_to_string(&mut token)
        .with_context(|| format!("reading the HTTP token file {shown}"))?;
    let token = token.trim().to_owned();
    if token.len() < MIN_LENGTH {
        bail!(
            "the token in {shown} is shorter than {MIN_LENGTH} characters: use a long random one"
        );
    }
    Ok(token)
}

/// A regular file, owned by root or drainer's user, that group and others cannot touch.
fn check(file: &File, path: &Path) -> Result<()> {
    let shown = path.display();
    let meta = file
        .metadata()
        .with_context(|| format!("inspecting the HTTP token file {shown}"))?;
    if !meta.file_type().is_file() {
        bail!("the HTTP token file {shown} is not a regular file");
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        bail!(
            "the HTTP token file {shown} belongs to uid {}: it must belong to root or to the user \
             drainer runs as (uid {me}), so no one else can change the token (chown it)",
            meta.uid()
        );
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "the HTTP token file {shown} has mode {mode:03o}: group and others may read or write \
             it, and whoever reads the token can start a drain; run `chmod 600 {shown}`"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn file_with(mode: u32, text: &str) -> (std::path::PathBuf, impl Drop) {
        let dir = std::env::temp_dir().join(format!(
            "drainer-token-test-{}-{mode:o}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        struct Remove(std::path::PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        (path, Remove(dir))
    }

    #[test]
    fn a_private_file_gives_its_trimmed_token() {
        let (path, _dir) = file_with(0o600, "a-long-random-token-xyz\n");
        assert_eq!(read(&path).unwrap(), "a-long-random-token-xyz");
    }

    #[test]
    fn a_file_group_or_others_can_read_is_refused_with_the_chmod_to_run() {
        for mode in [0o640, 0o604, 0o620, 0o644] {
            let (path, _dir) = file_with(mode, "a-long-random-token-xyz\n");
            let err = format!("{:#}", read(&path).unwrap_err());
            assert!(
                err.contains(&format!("chmod 600 {}", path.display())),
                "{err}"
            );
        }
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let (path, _dir) = file_with(0o600, "a-long-random-token-xyz\n");
        let link = path.with_file_name("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = format!("{:#}", read(&link).unwrap_err());
        assert!(err.contains("is a symbolic link"), "{err}");
    }

    #[test]
    fn a_short_token_is_refused() {
        let (path, _dir) = file_with(0o600, "short\n");
        let err = format!("{:#}", read(&path).unwrap_err());
        assert!(err.contains("shorter than 16"), "{err}");
    }
}
