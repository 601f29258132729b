//! The HTTP drain endpoint's bearer token (`--http-token-file`). Whoever holds it can start a
//! drain, so drainer takes it only from a regular file that no one but its owner (root, or the
//! user drainer runs as) can read or write, opened without following a symlink.
use std::{io::Read as _, path::Path};

use anyhow::{Context as _, Result, bail};

use crate::system::trusted_file::{self, Trust};

/// The shortest token accepted.
const MIN_LENGTH: usize = 16;

/// What the token file must be: whoever can read it can start a drain.
const TRUST: Trust = Trust {
    what: "the HTTP token file",
    controls: "who may start a drain",
    forbidden_mode: 0o077,
    forbidden_access: "readable or writable",
    chmod: "chmod 600",
    link_hint: " (from a Kubernetes Secret volume, mount the key with subPath)",
};

pub fn read(path: &Path) -> Result<String> {
    let (file, _) = trusted_file::open(path, &TRUST)?;
    let mut token = String::new();
    (&file)
        .read_to_string(&mut token)
        .with_context(|| format!("reading the HTTP token file {}", path.display()))?;
    let token = token.trim().to_owned();
    if token.len() < MIN_LENGTH {
        bail!(
            "the token in {} is shorter than {MIN_LENGTH} characters: use a long random one",
            path.display()
        );
    }
    Ok(token)
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
