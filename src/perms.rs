//! Permission rules for the files twinfs trusts (issue 13, local users).
//!
//! The daemon runs as root and holds every file's data: a local user who can
//! read the store reads every file on the mount, and one who can write the
//! config, a hook script or the key can make root run their code or
//! impersonate the node. So:
//! - the data dir must not be readable or writable by group or others (0700;
//!   `twinfs init` creates it so, or fixes an existing one);
//! - the config, the hook script and the certificates must not be writable by
//!   group or others;
//! - the private key must not be readable or writable by group or others.
//!
//! A refusal is one line naming the path, its mode and the `chmod` that fixes it.
//! Ownership is not checked: root-owned is what the package and `twinfs init`
//! make, and a file another user owns can be chmod'ed back by that user, which
//! a later start refuses again.

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::config::{Config, PeerTrustConfig};

/// A file or directory twinfs will not trust with its mode.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PermsError {
    /// Group or others have access they must not have.
    #[error("{} is mode {mode:04o}: {why}; run `chmod {fix:o} {}`{hint}", path.display(), path.display())]
    TooOpen {
        /// The file or directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// What the rule protects against.
        why: &'static str,
        /// The mode that fixes it.
        fix: u32,
        /// Another way to fix it, if any (" (or ...)").
        hint: &'static str,
    },
    /// Its mode could not be read.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What stat said.
        error: std::io::Error,
    },
}

fn mode_of(path: &Path) -> Result<u32, PermsError> {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .map_err(|error| PermsError::Io {
            path: path.to_path_buf(),
            error,
        })
}

/// The data dir: no access for group or others.
pub(crate) fn check_data_dir(path: &Path) -> Result<(), PermsError> {
    let mode = mode_of(path)?;
    if mode & 0o077 != 0 {
        return Err(PermsError::TooOpen {
            path: path.to_path_buf(),
            mode,
            why: "a data dir holding user data must not be readable or writable by other users",
            fix: mode & !0o077,
            hint: " (or `twinfs init`)",
        });
    }
    Ok(())
}

/// A private key: no access for group or others.
pub(crate) fn check_private_key(path: &Path) -> Result<(), PermsError> {
    let mode = mode_of(path)?;
    if mode & 0o077 != 0 {
        return Err(PermsError::TooOpen {
            path: path.to_path_buf(),
            mode,
            why: "a private key must not be readable or writable by other users",
            fix: mode & !0o077,
            hint: "",
        });
    }
    Ok(())
}

/// A config file, hook script or certificate: not writable by group or others
/// (whoever can change it decides what root runs or whom the node trusts).
pub(crate) fn check_not_world_writable(path: &Path) -> Result<(), PermsError> {
    let mode = mode_of(path)?;
    if mode & 0o022 != 0 {
        return Err(PermsError::TooOpen {
            path: path.to_path_buf(),
            mode,
            why: "a file that twinfs trusts must not be writable by other users",
            fix: mode & !0o022,
            hint: "",
        });
    }
    Ok(())
}

/// Every file `twinfs run` trusts, given its config (read from `config_path`).
/// Files that do not exist are left to the code that opens them, which names
/// them in its own error.
pub(crate) fn check_config_files(config_path: &Path, cfg: &Config) -> Result<(), PermsError> {
    let exists = |p: &Path| p.symlink_metadata().is_ok();
    check_not_world_writable(config_path)?;
    if let Some(r) = &cfg.replication {
        if exists(&r.key) {
            check_private_key(&r.key)?;
        }
        let mut public = vec![r.cert.as_path()];
        if let PeerTrustConfig::CertFile(p) = &r.peer_trust {
            public.push(p);
        }
        for p in public.into_iter().filter(|p| exists(p)) {
            check_not_world_writable(p)?;
        }
    }
    if let Some(f) = &cfg.failover {
        if exists(&f.script) {
            check_not_world_writable(&f.script)?;
        }
        if let Some(w) = f.witness.as_ref().filter(|w| exists(&w.cert)) {
            check_not_world_writable(&w.cert)?;
        }
    }
    Ok(())
}

/// Creates `path` (and its parents) with mode 0700, or takes group and other
/// bits off it if it exists.
pub(crate) fn make_private_dir(path: &Path) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
        Err(e) => return Err(e),
    }
    // Also when just created: the umask may have taken owner bits away.
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    let want = (mode & !0o077) | 0o700;
    if mode != want {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(want))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_data_dir_others_can_read_is_refused_with_path_mode_and_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("data");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = check_data_dir(&d).unwrap_err().to_string();
        let p = d.display();
        assert_eq!(
            e,
            format!(
                "{p} is mode 0755: a data dir holding user data must not be readable or \
                 writable by other users; run `chmod 700 {p}` (or `twinfs init`)"
            )
        );
        for bad in [0o750, 0o705, 0o720, 0o702] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(bad)).unwrap();
            assert!(check_data_dir(&d).is_err(), "{bad:o} accepted");
        }
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        check_data_dir(&d).unwrap();
    }

    #[test]
    fn make_private_dir_creates_0700_and_fixes_an_open_one() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("a/b");
        make_private_dir(&d).unwrap();
        assert_eq!(mode_of(&d).unwrap(), 0o700);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        make_private_dir(&d).unwrap();
        assert_eq!(mode_of(&d).unwrap(), 0o700);
        check_data_dir(&d).unwrap();
        // Not a directory: an error, nothing changed.
        let f = file(tmp.path(), "f", 0o644);
        assert!(make_private_dir(&f).is_err());
        assert_eq!(mode_of(&f).unwrap(), 0o644);
    }

    #[test]
    fn keys_others_can_read_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        check_private_key(&file(tmp.path(), "ok.key", 0o600)).unwrap();
        check_private_key(&file(tmp.path(), "ro.key", 0o400)).unwrap();
        let k = file(tmp.path(), "node.key", 0o644);
        let e = check_private_key(&k).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{} is mode 0644: a private key must not be readable or writable by other \
                 users; run `chmod 600 {}`",
                k.display(),
                k.display()
            )
        );
        check_private_key(&file(tmp.path(), "g.key", 0o640)).unwrap_err();
    }

    #[test]
    fn files_others_can_write_are_refused_readable_ones_are_fine() {
        let tmp = tempfile::tempdir().unwrap();
        check_not_world_writable(&file(tmp.path(), "a.toml", 0o644)).unwrap();
        check_not_world_writable(&file(tmp.path(), "b.lua", 0o600)).unwrap();
        for (name, mode, fix) in [
            ("c.toml", 0o664, "644"),
            ("d.lua", 0o646, "644"),
            ("e", 0o777, "755"),
        ] {
            let p = file(tmp.path(), name, mode);
            let e = check_not_world_writable(&p).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("{} is mode {mode:04o}: ", p.display())),
                "{e}"
            );
            assert!(
                e.ends_with(&format!("run `chmod {fix} {}`", p.display())),
                "{e}"
            );
        }
        let missing = tmp.path().join("missing");
        assert!(matches!(
            check_not_world_writable(&missing),
            Err(PermsError::Io { .. })
        ));
    }

    #[test]
    fn check_config_files_names_the_key_and_the_script() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let key = file(d, "node.key", 0o600);
        let cert = file(d, "node.crt", 0o644);
        let peer = file(d, "peer.crt", 0o644);
        let script = file(d, "failover.lua", 0o644);
        let text = format!(
            "[node]\nname = \"a\"\n\
             [replication]\nlisten = \"127.0.0.1:7789\"\npeer = \"127.0.0.1:7790\"\n\
             cert = {:?}\nkey = {:?}\npeer_cert = {:?}\n\
             [failover]\nscript = {:?}\n",
            cert.display().to_string(),
            key.display().to_string(),
            peer.display().to_string(),
            script.display().to_string()
        );
        let config = file(d, "twinfs.toml", 0o644);
        std::fs::write(&config, &text).unwrap();
        let cfg = match Config::from_toml_str(&text, &config) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        check_config_files(&config, &cfg).unwrap();

        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = check_config_files(&config, &cfg).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{} is mode 0666", script.display())),
            "{e}"
        );
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_config_files(&config, &cfg).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{} is mode 0644", key.display())),
            "{e}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o620)).unwrap();
        let e = check_config_files(&config, &cfg).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{} is mode 0620", config.display())),
            "{e}"
        );
    }
}
