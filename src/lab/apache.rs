//! The one writer of the lab's Apache configs: a private `httpd.conf`
//! (Debian's `/usr/sbin/apache2`, mpm_event, nothing read from
//! `/etc/apache2`, no systemd) and the control script `apachectl.sh` that
//! the supervisor's `[failover.services.apache2]` runs.
//!
//! Two kinds of `httpd.conf`: [`write()`] serves one DocumentRoot (the
//! failover tests and the demo), [`write_site`] carries the product's site
//! file for both servers serving (`src/apache.rs`, reached as `super::site`:
//! `src/lab.rs` re-exports it, the tests' harness includes it), around the
//! same private server part. The product text is never repeated here.
//!
//! The end-to-end tests compile this file into their harness
//! (`tests/harness/web.rs` wraps it in `ApacheConf`); the demo and the
//! failover bench get the same files from `twinfs lab apache-conf`
//! (`scripts/lib/lab.sh`).

#![allow(dead_code)] // neither the tests nor `twinfs lab` use every item

use std::io;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use super::site::{Site, SiteError, MODULES};

/// Debian's Apache binary.
pub(crate) const APACHE_BIN: &str = "/usr/sbin/apache2";
/// Where Debian keeps Apache's loadable modules.
pub(crate) const APACHE_MODULES: &str = "/usr/lib/apache2/modules";
/// How long the control script waits for Apache to write its pid file after
/// `-k start`, and for that pid to be gone after SIGTERM (then SIGKILL).
const CTL_WAIT_STEPS: u32 = 200;
/// One step of that wait (0.05 s: the failover bench times Apache's start).
const CTL_STEP: &str = "0.05";

/// The files of one private Apache, all in one directory.
#[derive(Debug, Clone)]
pub(crate) struct ApacheFiles {
    /// The directory: config, script, pid file, logs, runtime files.
    pub(crate) dir: PathBuf,
    /// `DIR/httpd.conf`.
    pub(crate) conf: PathBuf,
    /// `DIR/apachectl.sh`: `start` returns once Apache serves, `stop` once
    /// its process is gone.
    pub(crate) script: PathBuf,
    /// `DIR/httpd.pid`.
    pub(crate) pidfile: PathBuf,
    /// `DIR/error.log`.
    pub(crate) error_log: PathBuf,
    /// `DIR/start.log`: what `apache2 -k start` printed.
    pub(crate) start_log: PathBuf,
}

/// Writes `dir/httpd.conf` serving `docroot` on `listen:port` (every address
/// of the namespace when `listen` is `None`, which is what a VIP that comes
/// and goes needs), `dir/health.txt` (served as `/twinfs-health`, outside the
/// document root, for the hooks' `http.check`) and the control script
/// `dir/apachectl.sh`. `extra` is appended to the config as it is.
///
/// Apache runs as `www-data` (it refuses root), so the document root and the
/// directories above it must be readable by that user; `dir` is made
/// world-readable here for the same reason.
pub(crate) fn write(
    dir: &Path,
    docroot: &Path,
    listen: Option<IpAddr>,
    port: u16,
    extra: &str,
) -> io::Result<ApacheFiles> {
    write_with(dir, |f| conf_text(f, docroot, listen, port, extra))
}

/// Writes `dir/httpd.conf` with the lab's private server part (`Listen
/// PORT` on every address, PORT being `site`'s own backend port), a
/// `LoadModule` for each of the site's [`MODULES`] that is not compiled in,
/// then `site`'s text as `twinfs apache-conf` prints it, then `extra`; and
/// the control script, as [`write()`] does. The site's DocumentRoot must be
/// readable by `www-data`, as with [`write()`].
pub(crate) fn write_site(dir: &Path, site: &Site, extra: &str) -> io::Result<ApacheFiles> {
    let text = site
        .render()
        .map_err(|e: SiteError| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let port = site.this.addr.port();
    write_with(dir, |f| {
        let mut modules = String::new();
        for m in MODULES {
            // Guarded: Debian compiles some in (watchdog), and loading a
            // compiled-in module is an error.
            modules.push_str(&format!(
                "<IfModule !{id}>\n    LoadModule {id} {APACHE_MODULES}/{file}\n</IfModule>\n",
                id = m.id(),
                file = m.file(),
            ));
        }
        format!(
            "{}# The modules of twinfs's site (src/apache.rs MODULES).\n{modules}\
             # The site, as `twinfs apache-conf` writes it.\n{text}{}",
            server_text(f, None, port),
            with_newline(extra)
        )
    })
}

fn write_with(dir: &Path, conf: impl FnOnce(&ApacheFiles) -> String) -> io::Result<ApacheFiles> {
    let f = ApacheFiles {
        dir: dir.to_path_buf(),
        conf: dir.join("httpd.conf"),
        script: dir.join("apachectl.sh"),
        pidfile: dir.join("httpd.pid"),
        error_log: dir.join("error.log"),
        start_log: dir.join("start.log"),
    };
    let named = |e: io::Error, p: &Path| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
    // Workers run as www-data and may reopen files here.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| named(e, dir))?;
    std::fs::write(&f.conf, conf(&f)).map_err(|e| named(e, &f.conf))?;
    let health = dir.join("health.txt");
    std::fs::write(&health, b"ok\n").map_err(|e| named(e, &health))?;
    std::fs::write(&f.script, script_text(&f)).map_err(|e| named(e, &f.script))?;
    std::fs::set_permissions(&f.script, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| named(e, &f.script))?;
    Ok(f)
}

fn conf_text(
    f: &ApacheFiles,
    docroot: &Path,
    listen: Option<IpAddr>,
    port: u16,
    extra: &str,
) -> String {
    format!(
        r#"{server}DocumentRoot "{root}"
<Directory "{root}">
    AllowOverride None
    Require all granted
</Directory>
# A health page outside the replicated tree, for the hooks' http.check
# (a fresh, empty store has no page yet).
Alias /twinfs-health "{d}/health.txt"
<Files "health.txt">
    Require all granted
</Files>
<Directory "{d}">
    Require all granted
</Directory>
{extra}"#,
        server = server_text(f, listen, port),
        d = f.dir.display(),
        root = docroot.display(),
        extra = with_newline(extra),
    )
}

/// `extra` ending with a newline (unless empty).
fn with_newline(extra: &str) -> String {
    if extra.is_empty() || extra.ends_with('\n') {
        extra.to_string()
    } else {
        format!("{extra}\n")
    }
}

/// The private server part every lab `httpd.conf` starts with: where its
/// files are, the MPM and the base modules, the user, few processes, and
/// nothing served outside what the rest of the file grants.
fn server_text(f: &ApacheFiles, listen: Option<IpAddr>, port: u16) -> String {
    let listen_line = match listen {
        None => format!("Listen {port}"),
        Some(IpAddr::V4(a)) => format!("Listen {a}:{port}"),
        Some(IpAddr::V6(a)) => format!("Listen [{a}]:{port}"),
    };
    let server_name = listen.map_or_else(|| "localhost".to_string(), |a| a.to_string());
    format!(
        r#"# Private config written by twinfs's lab (src/lab/apache.rs); nothing
# from /etc/apache2 is read.
ServerRoot "{d}"
ServerName {server_name}
{listen_line}
PidFile "{pid}"
ErrorLog "{log}"
LogLevel warn
DefaultRuntimeDir "{d}"
LoadModule mpm_event_module {m}/mod_mpm_event.so
LoadModule authz_core_module {m}/mod_authz_core.so
LoadModule mime_module {m}/mod_mime.so
LoadModule dir_module {m}/mod_dir.so
LoadModule alias_module {m}/mod_alias.so
User www-data
Group www-data
TypesConfig /etc/mime.types
DirectoryIndex index.html
KeepAlive Off
Timeout 10
# Few processes: the machine is shared.
StartServers 1
ServerLimit 2
ThreadsPerChild 8
MaxRequestWorkers 16
MinSpareThreads 8
MaxSpareThreads 16
<Directory />
    AllowOverride None
    Require all denied
</Directory>
"#,
        d = f.dir.display(),
        pid = f.pidfile.display(),
        log = f.error_log.display(),
        m = APACHE_MODULES,
    )
}

/// The control script: `start` returns once Apache's pid file names a live
/// process (which means it has bound its port: Apache writes the pid file
/// after that), `stop` once that process is gone. Both wait at most 10 s; a
/// failing start prints the end of the error log.
fn script_text(f: &ApacheFiles) -> String {
    format!(
        r#"#!/bin/sh
# Starts/stops the private Apache of {conf}, like apache2ctl, but waits
# (bounded) until the start took or the stop is complete. Written by
# twinfs's lab (src/lab/apache.rs).
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
BIN='{bin}'
CONF='{conf}'
PIDFILE='{pid}'
ERRLOG='{log}'
STARTLOG='{start_log}'
# The pid in the pid file, if that process lives (not a zombie) and was
# started from this config (a stale file's pid may belong to someone else).
ours() {{
    p=$(tr -dc 0-9 < "$PIDFILE" 2>/dev/null)
    [ -n "$p" ] || return 1
    st=$(sed 's/.*) \(.\).*/\1/' "/proc/$p/stat" 2>/dev/null) || return 1
    case "$st" in Z|X|'') return 1 ;; esac
    tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$CONF" || return 1
    echo "$p"
}}
case "$1" in
start)
    if p=$(ours); then echo "apache2 ($CONF) already running, pid $p"; exit 0; fi
    rm -f "$PIDFILE"
    # Its own output goes to a file: the daemon must not keep our caller's
    # pipes open.
    if ! "$BIN" -f "$CONF" -k start >>"$STARTLOG" 2>&1 </dev/null; then
        echo "$BIN -f $CONF -k start failed:" >&2
        tail -n 20 "$STARTLOG" "$ERRLOG" >&2 2>/dev/null
        exit 1
    fi
    i=0
    while [ "$i" -lt {steps} ]; do
        if p=$(ours); then echo "apache2 started, pid $p"; exit 0; fi
        i=$((i + 1))
        sleep {step}
    done
    echo "apache2 ($CONF) wrote no live pid to $PIDFILE within 10 s:" >&2
    tail -n 20 "$STARTLOG" "$ERRLOG" >&2 2>/dev/null
    exit 1
    ;;
stop)
    if ! p=$(ours); then echo "apache2 ($CONF) not running"; exit 0; fi
    kill -TERM "$p"
    i=0
    while [ "$i" -lt {steps} ]; do
        [ -d "/proc/$p" ] && ours >/dev/null || {{ echo "apache2 stopped"; exit 0; }}
        i=$((i + 1))
        sleep {step}
    done
    echo "apache2 pid $p still there 10 s after SIGTERM: SIGKILL" >&2
    kill -KILL "$p"
    sleep 0.2
    ours >/dev/null && exit 1
    exit 0
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
"#,
        bin = APACHE_BIN,
        conf = f.conf.display(),
        pid = f.pidfile.display(),
        log = f.error_log.display(),
        start_log = f.start_log.display(),
        steps = CTL_WAIT_STEPS,
        step = CTL_STEP,
    )
}
