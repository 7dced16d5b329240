//! Starting, stopping and asking about services (Apache): systemd, or
//! commands with a pid file.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::{exec, show, System};
use crate::actions::{ActionError, ExecResult, ServiceState};

/// How services are driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceBackend {
    /// `systemctl start|stop|is-active NAME` (PID 1 is systemd).
    Systemd,
    /// The commands of [`ServiceCommands`] (SysV init, containers, runit...).
    Commands,
}

impl ServiceBackend {
    /// Systemd when PID 1 is systemd (`/run/systemd/system` exists, as
    /// `sd_booted()` checks), commands otherwise.
    pub fn detect() -> ServiceBackend {
        if Path::new("/run/systemd/system").is_dir() {
            ServiceBackend::Systemd
        } else {
            ServiceBackend::Commands
        }
    }
}

/// How to drive one service without systemd.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceCommands {
    /// Starts the service (`apache2ctl start`); exit code 0 means started.
    pub start: Vec<String>,
    /// Stops the service (`apache2ctl stop`).
    pub stop: Vec<String>,
    /// Exit code 0 means running. When absent, the pid file tells.
    pub status: Option<Vec<String>>,
    /// The service's pid file: running while the pid in it is alive.
    pub pidfile: Option<PathBuf>,
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

impl ServiceCommands {
    /// Debian's Apache: `apache2ctl start|stop`, `/run/apache2/apache2.pid`.
    pub fn apache2() -> ServiceCommands {
        ServiceCommands {
            start: strings(&["apache2ctl", "start"]),
            stop: strings(&["apache2ctl", "stop"]),
            status: None,
            pidfile: Some(PathBuf::from("/run/apache2/apache2.pid")),
        }
    }

    /// RHEL's Apache: `httpd -k start|stop`, `/run/httpd/httpd.pid`.
    pub fn httpd() -> ServiceCommands {
        ServiceCommands {
            start: strings(&["httpd", "-k", "start"]),
            stop: strings(&["httpd", "-k", "stop"]),
            status: None,
            pidfile: Some(PathBuf::from("/run/httpd/httpd.pid")),
        }
    }

    /// The built-in commands for a service name (`apache2`, `httpd`).
    pub fn builtin(name: &str) -> Option<ServiceCommands> {
        match name {
            "apache2" => Some(ServiceCommands::apache2()),
            "httpd" => Some(ServiceCommands::httpd()),
            _ => None,
        }
    }
}

/// How a service is driven, once configuration and backend are combined.
enum Driver {
    Systemd,
    Commands(ServiceCommands),
}

fn driver(sys: &System, name: &str) -> Result<Driver, ActionError> {
    if name.is_empty() || name.starts_with('-') {
        return Err(ActionError(format!("invalid service name {name:?}")));
    }
    if let Some(c) = sys.opts.services.get(name) {
        return Ok(Driver::Commands(c.clone()));
    }
    match sys.backend {
        ServiceBackend::Systemd => Ok(Driver::Systemd),
        ServiceBackend::Commands => ServiceCommands::builtin(name).map(Driver::Commands).ok_or_else(|| {
            ActionError(format!(
                "service {name}: no systemd here and no commands configured (give its start, stop and status or pidfile)"
            ))
        }),
    }
}

/// Runs a service command; a non-zero exit or a timeout is an error that
/// quotes the command and what it printed.
fn run_checked(argv: &[String], timeout: Duration) -> Result<ExecResult, ActionError> {
    let r = exec::run(argv, timeout)?;
    if r.timed_out {
        return Err(ActionError(format!(
            "{}: no answer within {timeout:?} (killed){}",
            show(argv),
            printed(&r)
        )));
    }
    if r.code != Some(0) {
        return Err(ActionError(format!(
            "{}: exited with {}{}",
            show(argv),
            r.code
                .map_or("a signal".to_string(), |c| format!("code {c}")),
            printed(&r)
        )));
    }
    Ok(r)
}

/// `: <stderr>` (or stdout when stderr is empty), trimmed, for messages.
fn printed(r: &ExecResult) -> String {
    let s = if r.stderr.trim().is_empty() {
        r.stdout.trim()
    } else {
        r.stderr.trim()
    };
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

fn systemctl(args: &[&str], name: &str) -> Vec<String> {
    let mut v = strings(&["systemctl"]);
    v.extend(args.iter().map(|s| s.to_string()));
    v.push(name.to_string());
    v
}

/// `systemctl is-active` words that mean the unit still has (or is about to
/// have) processes.
fn systemd_word_running(word: &str) -> bool {
    matches!(
        word,
        "active" | "reloading" | "activating" | "deactivating" | "refreshing"
    )
}

pub(crate) fn status(sys: &System, name: &str) -> Result<ServiceState, ActionError> {
    Ok(state(sys, &driver(sys, name)?, name)?.0)
}

/// The state, and the pid the pid file named (to wait for it on stop).
fn state(sys: &System, d: &Driver, name: &str) -> Result<(ServiceState, Option<u32>), ActionError> {
    match d {
        Driver::Systemd => {
            // is-active exits non-zero for anything but active: read the word.
            let argv = systemctl(&["is-active"], name);
            let r = exec::run(&argv, sys.opts.command_timeout)?;
            if r.timed_out {
                return Err(ActionError(format!(
                    "{}: no answer within {:?}",
                    show(&argv),
                    sys.opts.command_timeout
                )));
            }
            let word = r.stdout.trim();
            let running = if word.is_empty() {
                r.code == Some(0)
            } else {
                systemd_word_running(word)
            };
            Ok((
                if running {
                    ServiceState::Running
                } else {
                    ServiceState::Stopped
                },
                None,
            ))
        }
        Driver::Commands(c) => {
            if let Some(argv) = &c.status {
                let r = exec::run(argv, sys.opts.command_timeout)?;
                if r.timed_out {
                    return Err(ActionError(format!(
                        "{}: no answer within {:?}{}",
                        show(argv),
                        sys.opts.command_timeout,
                        printed(&r)
                    )));
                }
                let pid = c
                    .pidfile
                    .as_deref()
                    .and_then(|p| read_pidfile(p).ok().flatten());
                let st = if r.code == Some(0) {
                    ServiceState::Running
                } else {
                    ServiceState::Stopped
                };
                return Ok((st, pid));
            }
            let Some(pidfile) = &c.pidfile else {
                return Err(ActionError(format!(
                    "service {name}: cannot tell whether it runs: configure a status command or a pidfile"
                )));
            };
            match read_pidfile(pidfile)? {
                Some(pid) if pid_alive(pid) => Ok((ServiceState::Running, Some(pid))),
                _ => Ok((ServiceState::Stopped, None)),
            }
        }
    }
}

/// The pid in a pid file; `None` when the file is absent or empty (a stopped
/// service removes it).
fn read_pidfile(path: &Path) -> Result<Option<u32>, ActionError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ActionError(format!(
                "cannot read pid file {}: {e}",
                path.display()
            )))
        }
    };
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    match t.parse::<u32>() {
        Ok(p) if p > 0 => Ok(Some(p)),
        _ => Err(ActionError(format!(
            "pid file {}: {t:?} is not a pid",
            path.display()
        ))),
    }
}

/// Whether the process exists and is not a zombie (an exited process that
/// nobody reaped yet holds no files and no ports).
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

pub(crate) fn start(sys: &System, name: &str) -> Result<(), ActionError> {
    let d = driver(sys, name)?;
    match &d {
        // `systemctl start` of an active unit is a no-op that exits 0.
        Driver::Systemd => {
            run_checked(&systemctl(&["start"], name), sys.opts.command_timeout)?;
        }
        Driver::Commands(c) => {
            let known = c.status.is_some() || c.pidfile.is_some();
            if known && state(sys, &d, name)?.0 == ServiceState::Running {
                tracing::debug!(service = name, "already running");
                return Ok(());
            }
            if c.start.is_empty() {
                return Err(ActionError(format!(
                    "service {name}: no start command configured"
                )));
            }
            run_checked(&c.start, sys.opts.command_timeout)?;
        }
    }
    tracing::info!(service = name, "service started");
    Ok(())
}

pub(crate) fn stop(sys: &System, name: &str) -> Result<(), ActionError> {
    let d = driver(sys, name)?;
    let stop_argv = match &d {
        Driver::Systemd => systemctl(&["stop"], name),
        Driver::Commands(c) => c.stop.clone(),
    };
    let can_tell = match &d {
        Driver::Systemd => true,
        Driver::Commands(c) => c.status.is_some() || c.pidfile.is_some(),
    };
    if !can_tell {
        // Nothing to wait on: the command's exit is all we know.
        run_checked(&stop_argv, sys.opts.command_timeout)?;
        tracing::warn!(
            service = name,
            "stopped without a status command or pidfile: not waited for"
        );
        return Ok(());
    }
    let (st, pid) = state(sys, &d, name)?;
    if st == ServiceState::Stopped {
        tracing::debug!(service = name, "already stopped");
        return Ok(());
    }
    if stop_argv.is_empty() {
        return Err(ActionError(format!(
            "service {name}: no stop command configured"
        )));
    }
    if let Err(e) = run_checked(&stop_argv, sys.opts.command_timeout) {
        // A stop command that fails because the service died meanwhile is
        // fine; otherwise its message is the answer.
        if state(sys, &d, name)?.0 == ServiceState::Stopped && pid.is_none_or(|p| !pid_alive(p)) {
            return Ok(());
        }
        return Err(e);
    }
    wait_stopped(sys, &d, name, pid, &stop_argv)
}

/// Polls until the service is stopped and its old pid gone, at most
/// `stop_timeout`.
fn wait_stopped(
    sys: &System,
    d: &Driver,
    name: &str,
    pid: Option<u32>,
    stop_argv: &[String],
) -> Result<(), ActionError> {
    const STEP: Duration = Duration::from_millis(50);
    let timeout = sys.opts.stop_timeout;
    let started = Instant::now();
    let deadline = started + timeout;
    let max_polls = (timeout.as_millis() / STEP.as_millis()) as u64 + 2;
    for _ in 0..max_polls {
        let pid_gone = pid.is_none_or(|p| !pid_alive(p));
        if pid_gone && state(sys, d, name)?.0 == ServiceState::Stopped {
            tracing::info!(service = name, elapsed = ?started.elapsed(), "service stopped");
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        thread::sleep(STEP.min(left));
    }
    Err(ActionError(format!(
        "service {name} still running {timeout:?} after `{}`{}",
        show(stop_argv),
        pid.map_or(String::new(), |p| format!(" (pid {p})"))
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actuators::SystemOptions;

    #[test]
    fn builtins_know_debian_and_rhel() {
        let a = ServiceCommands::builtin("apache2").unwrap();
        assert_eq!(a.start, ["apache2ctl", "start"]);
        assert_eq!(
            a.pidfile.as_deref(),
            Some(Path::new("/run/apache2/apache2.pid"))
        );
        let h = ServiceCommands::builtin("httpd").unwrap();
        assert_eq!(h.stop, ["httpd", "-k", "stop"]);
        assert_eq!(
            h.pidfile.as_deref(),
            Some(Path::new("/run/httpd/httpd.pid"))
        );
        assert!(ServiceCommands::builtin("nginx").is_none());
    }

    #[test]
    fn unknown_service_without_systemd_says_what_to_configure() {
        let sys = System::new(SystemOptions {
            backend: Some(ServiceBackend::Commands),
            ..Default::default()
        });
        let e = status(&sys, "nginx").unwrap_err();
        assert!(e.0.contains("service nginx: no systemd here"), "{e}");
        let e = status(&sys, "--now").unwrap_err();
        assert!(e.0.contains("invalid service name"), "{e}");
    }

    #[test]
    fn systemctl_argv_and_words() {
        assert_eq!(
            systemctl(&["is-active"], "apache2"),
            ["systemctl", "is-active", "apache2"]
        );
        assert!(systemd_word_running("deactivating"));
        assert!(!systemd_word_running("inactive"));
        assert!(!systemd_word_running("failed"));
    }

    #[test]
    fn pid_checks() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX - 1));
        let dir = std::env::temp_dir().join(format!("twinfs-pidfile-{}", std::process::id()));
        std::fs::write(&dir, "12x\n").unwrap();
        let e = read_pidfile(&dir).unwrap_err();
        assert!(e.0.contains("is not a pid"), "{e}");
        std::fs::write(&dir, " 42\n").unwrap();
        assert_eq!(read_pidfile(&dir).unwrap(), Some(42));
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(read_pidfile(&dir).unwrap(), None);
    }
}
