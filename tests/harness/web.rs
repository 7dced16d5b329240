//! The web side of the failover lab: a private Apache that the supervisor
//! starts and stops inside a node's namespace, a tiny HTTP client, and a
//! poller that plays the user in front of the site.
//!
//! - [`ApacheConf::write`] writes a minimal Apache config (Debian's
//!   `/usr/sbin/apache2`, mpm_event, nothing read from `/etc/apache2`, no
//!   systemd) and a control script (the lab's one writer, `src/lab/apache.rs`); [`ApacheConf::start_argv`],
//!   [`ApacheConf::stop_argv`] and [`ApacheConf::pidfile`] are exactly what
//!   `[failover.services.apache2]` takes ([`ApacheConf::services_toml`] writes
//!   that table). The supervisor runs in the node's namespace, so the Apache
//!   it starts listens there.
//! - [`http_get`] does one HTTP/1.0 GET from a place of the lab (usually the
//!   client), with one deadline for connect, send and receive.
//! - [`Poller`] GETs a URL from a place every 50 ms (200 ms deadline each) on
//!   its own thread, for at most the duration it was given, and records every
//!   answer or error with its time; a failover test reads the outage from it:
//!
//! ```ignore
//! let poller = Poller::start(&lab, Place::Client, &format!("http://{}/", lab.vip()), MAX);
//! let ok = poller.wait_ok_after(Duration::ZERO, START).expect("site up");
//! let killed_at = poller.elapsed();
//! lab.kill_node(Node::A);
//! let back = poller.wait_ok_after(killed_at, FAILOVER)
//!     .unwrap_or_else(|| panic!("site never came back:\n{}", poller.report()));
//! assert_eq!(back.hash(), ok.hash(), "B serves the same page");
//! let samples = poller.stop();
//! ```
//!
//! Nothing here touches the host's network: requests are made from sockets
//! created inside the lab's namespaces, and addresses are IP literals.

#![allow(dead_code)] // not every test module uses every helper

use std::collections::hash_map::DefaultHasher;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::apache;
use crate::harness::lab::{self, Lab, Place};
use crate::harness::util::{kill_child, poll_until, spawn_captured, wait_bounded};

pub(crate) use super::apache::{APACHE_BIN, APACHE_MODULES};
// The one HTTP client of the tests and the scripts (`twinfs lab get|poll`).
#[cfg(test)]
use super::http::parse_url;
pub(crate) use super::http::{http_get_here, request_here, Response};
/// Poll interval of [`Poller::start`].
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Per-request deadline (connect + send + receive) of [`Poller::start`].
pub(crate) const POLL_TIMEOUT: Duration = Duration::from_millis(200);

/// Whether Apache is installed (Debian package `apache2`): the binary and
/// the event MPM module.
///
/// When it is not: under `CI=true` this panics (a skipped end-to-end test in
/// CI is a failure); elsewhere it prints why and returns `false`.
pub(crate) fn require_apache(test: &str) -> bool {
    let missing = [
        APACHE_BIN.to_string(),
        format!("{APACHE_MODULES}/mod_mpm_event.so"),
    ]
    .into_iter()
    .find(|p| !Path::new(p).exists());
    match missing {
        None => true,
        Some(p) => {
            let reason = format!("{p} is missing (apt-get install -y apache2)");
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: end-to-end test cannot run: {reason}");
            }
            eprintln!("skipping {test}: {reason}");
            false
        }
    }
}

// ---------------------------------------------------------------------------
// Apache

/// A private Apache configuration in a directory of its own: `httpd.conf`,
/// the control script `apachectl.sh`, the pid file, the logs.
///
/// Apache runs as `www-data` (it refuses root), so the document root and the
/// directories above it must be readable by that user; [`ApacheConf::write`]
/// makes its own directory world-readable for the same reason.
///
/// Dropping it stops an Apache still running from this config (SIGTERM, then
/// SIGKILL after 10 s), by the pid in its pid file and only if that process's
/// command line names this config; a lab's drop kills it anyway with the
/// node's namespace.
#[derive(Debug)]
pub(crate) struct ApacheConf {
    dir: PathBuf,
    conf: PathBuf,
    script: PathBuf,
    pidfile: PathBuf,
    error_log: PathBuf,
    start_log: PathBuf,
    listen: Option<IpAddr>,
    port: u16,
}

impl ApacheConf {
    /// Writes `dir/httpd.conf` serving `docroot` on `listen:port` (every
    /// address of the namespace when `listen` is `None`, which is what a VIP
    /// that comes and goes needs) and the control script `dir/apachectl.sh`,
    /// with the lab's one Apache writer (`src/lab/apache.rs`).
    ///
    /// # Panics
    ///
    /// If a file cannot be written; the message names it.
    pub(crate) fn write(
        dir: &Path,
        docroot: &Path,
        listen: Option<IpAddr>,
        port: u16,
    ) -> ApacheConf {
        let f = apache::write(dir, docroot, listen, port, "")
            .unwrap_or_else(|e| panic!("writing the Apache config: {e}"));
        ApacheConf::of(f, listen, port)
    }

    fn of(f: apache::ApacheFiles, listen: Option<IpAddr>, port: u16) -> ApacheConf {
        ApacheConf {
            dir: f.dir,
            conf: f.conf,
            script: f.script,
            pidfile: f.pidfile,
            error_log: f.error_log,
            start_log: f.start_log,
            listen,
            port,
        }
    }

    /// Writes `dir/httpd.conf` carrying the product's site for both servers
    /// serving (`src/apache.rs`, as `twinfs apache-conf` prints it) around
    /// the lab's private server part, then `extra`, and the control script
    /// (the lab's one writer: `apache::write_site`). Apache listens on the
    /// site's port on every address of the namespace.
    ///
    /// # Panics
    ///
    /// If the site does not render or a file cannot be written.
    pub(crate) fn write_site(dir: &Path, site: &super::site::Site, extra: &str) -> ApacheConf {
        let f = apache::write_site(dir, site, extra)
            .unwrap_or_else(|e| panic!("writing the Apache site config: {e}"));
        ApacheConf::of(f, None, site.this.addr.port())
    }

    /// The command that starts Apache (and returns once it serves), as an
    /// argv list: `["/bin/sh", "DIR/apachectl.sh", "start"]`.
    pub(crate) fn start_argv(&self) -> Vec<String> {
        self.ctl_argv("start")
    }

    /// The command that stops Apache (and returns once its process is
    /// gone): `["/bin/sh", "DIR/apachectl.sh", "stop"]`.
    pub(crate) fn stop_argv(&self) -> Vec<String> {
        self.ctl_argv("stop")
    }

    fn ctl_argv(&self, verb: &str) -> Vec<String> {
        vec![
            "/bin/sh".to_string(),
            self.script.display().to_string(),
            verb.to_string(),
        ]
    }

    /// Apache's pid file (running while the pid in it lives).
    pub(crate) fn pidfile(&self) -> &Path {
        &self.pidfile
    }

    /// The config file.
    pub(crate) fn conf_path(&self) -> &Path {
        &self.conf
    }

    /// The directory holding config, script, pid file and logs.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The port Apache listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The `[failover.services.NAME]` table of a twinfs config that makes
    /// the supervisor drive this Apache as service `name`.
    pub(crate) fn services_toml(&self, name: &str) -> String {
        let list = |v: Vec<String>| {
            let items: Vec<String> = v.iter().map(|s| toml_str(s)).collect();
            format!("[{}]", items.join(", "))
        };
        format!(
            "[failover.services.{name}]\nstart = {}\nstop = {}\npidfile = {}\n",
            list(self.start_argv()),
            list(self.stop_argv()),
            toml_str(&self.pidfile.display().to_string()),
        )
    }

    /// The pid of the Apache running from this config: the pid file's, if
    /// that process lives and its command line names this config.
    pub(crate) fn running_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(&self.pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
        if state == "Z" || state == "X" {
            return None;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let conf = self.conf.display().to_string();
        String::from_utf8_lossy(&cmdline)
            .split('\0')
            .any(|a| a == conf)
            .then_some(pid)
    }

    /// The start output and the error log so far, for failure messages.
    pub(crate) fn logs(&self) -> String {
        let mut s = String::new();
        for f in [&self.start_log, &self.error_log] {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let _ = writeln!(s, "--- {}:\n{}", f.display(), text.trim_end());
        }
        s
    }
}

impl Drop for ApacheConf {
    fn drop(&mut self) {
        let Some(pid) = self.running_pid() else {
            return;
        };
        // The pid was just checked to be an Apache of this config, which this
        // test started (through the supervisor or start_argv).
        // SAFETY: kill(2) on that pid.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        let gone = poll_until(Duration::from_secs(10), || {
            self.running_pid().is_none().then_some(())
        });
        if gone.is_none() {
            if let Some(pid) = self.running_pid() {
                eprintln!("web: apache2 pid {pid} ignored SIGTERM for 10 s: SIGKILL");
                // SAFETY: as above, re-checked just now.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
    }
}

/// `s` as a TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Runs `argv` in `place`'s namespace to completion (killing it after
/// `timeout`), as the supervisor would: for running [`ApacheConf::start_argv`]
/// or [`ApacheConf::stop_argv`] by hand. `Ok` if it exited 0; otherwise an
/// error quoting the command and what it printed.
pub(crate) fn run_in(
    lab: &Lab,
    place: Place,
    argv: &[String],
    timeout: Duration,
) -> Result<Output, String> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| "run_in: empty argv".to_string())?;
    let mut cmd: Command = lab.command_in(place, prog);
    cmd.args(args);
    let mut cap = spawn_captured(&mut cmd).map_err(|e| format!("{argv:?} in {place:?}: {e}"))?;
    let Some(status) = wait_bounded(&mut cap.child, timeout) else {
        kill_child(&mut cap.child);
        return Err(format!(
            "{argv:?} in {place:?} did not finish within {timeout:?}; killed"
        ));
    };
    let out = cap.output(status);
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{argv:?} in {place:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

// ---------------------------------------------------------------------------
// HTTP

/// A hash of a response body, to compare pages without keeping them
/// (deterministic within a run).
pub(crate) fn body_hash(body: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    body.hash(&mut h);
    h.finish()
}

/// One HTTP/1.0 GET of `url` (`http://IP[:PORT]/PATH`, an IP literal: there
/// is no DNS in the lab) from a socket in `place`'s namespace. `timeout`
/// bounds the whole exchange (connect, send, receive). Returns the status
/// code and the body; an error says which step failed and why, e.g. `GET
/// http://10.202.0.10/: connect: Connection refused (os error 111)`.
pub(crate) fn http_get(
    lab: &Lab,
    place: Place,
    url: &str,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    lab::in_netns(lab.netns_path(place), || Ok(http_get_here(url, timeout))).unwrap_or_else(|e| {
        Err(format!(
            "GET {url}: cannot enter {place:?}'s namespace: {e}"
        ))
    })
}

/// One HTTP/1.0 request with any `method` and `body` from `place`'s
/// namespace, keeping the answer's headers (see [`http_get`]).
pub(crate) fn http_request(
    lab: &Lab,
    place: Place,
    method: &str,
    url: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Response, String> {
    lab::in_netns(lab.netns_path(place), || {
        Ok(request_here(method, url, body, timeout))
    })
    .unwrap_or_else(|e| {
        Err(format!(
            "{method} {url}: cannot enter {place:?}'s namespace: {e}"
        ))
    })
}

// ---------------------------------------------------------------------------
// The poller

/// What one request of a [`Poller`] got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sample {
    /// When the request started, since the poller started.
    pub(crate) at: Duration,
    /// How long it took.
    pub(crate) took: Duration,
    /// The answer, or the error (see [`http_get`]).
    pub(crate) result: Result<Reply, String>,
}

/// An HTTP answer, summed up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    /// The status code.
    pub(crate) status: u16,
    /// Body length in bytes.
    pub(crate) len: usize,
    /// [`body_hash`] of the body.
    pub(crate) hash: u64,
}

impl Sample {
    /// Whether the answer was `200 OK`.
    pub(crate) fn is_ok(&self) -> bool {
        self.status() == Some(200)
    }

    /// The status code, `None` for an error.
    pub(crate) fn status(&self) -> Option<u16> {
        self.result.as_ref().ok().map(|r| r.status)
    }

    /// The body hash, `None` for an error.
    pub(crate) fn hash(&self) -> Option<u64> {
        self.result.as_ref().ok().map(|r| r.hash)
    }

    /// One word for the outcome, which [`report`] groups runs by: `200
    /// (hash 1a2b3c4d)`, `503`, or the error without its varying parts.
    fn kind(&self) -> String {
        match &self.result {
            Ok(r) if r.status == 200 => {
                format!("200 ({} bytes, hash {:08x})", r.len, r.hash as u32)
            }
            Ok(r) => format!("{} ({} bytes)", r.status, r.len),
            // "GET url: step: detail": keep step and detail, drop the
            // "(N bytes so far)" that differs from sample to sample.
            Err(e) => {
                let e = e.split_once(": ").map_or(e.as_str(), |(_, r)| r);
                e.split(" (").next().unwrap_or(e).to_string()
            }
        }
    }
}

/// Timing of a [`Poller`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct PollerOpts {
    /// Time between the starts of two requests (if a request takes longer,
    /// the next starts right after it).
    pub(crate) interval: Duration,
    /// Deadline of one request (connect + send + receive).
    pub(crate) timeout: Duration,
    /// The poller stops by itself after this long.
    pub(crate) max: Duration,
}

/// GETs one URL from one place of the lab, over and over, on its own thread
/// (which has joined that place's network namespace), recording a
/// [`Sample`] per request. Bounded: it stops after the `max` it was given,
/// or at [`Poller::stop`], or when dropped.
///
/// Times are on the poller's clock: [`Poller::elapsed`] marks an event (a
/// node killed) so that [`Poller::first_ok_after`] finds what came after.
pub(crate) struct Poller {
    url: String,
    start: Instant,
    opts: PollerOpts,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// Starts polling `url` from `place` every [`POLL_INTERVAL`] with a
    /// [`POLL_TIMEOUT`] deadline per request, for at most `max`.
    ///
    /// # Panics
    ///
    /// If the thread cannot be started or the namespace file cannot be opened.
    pub(crate) fn start(lab: &Lab, place: Place, url: &str, max: Duration) -> Poller {
        Poller::start_with(
            lab,
            place,
            url,
            PollerOpts {
                interval: POLL_INTERVAL,
                timeout: POLL_TIMEOUT,
                max,
            },
        )
    }

    /// [`Poller::start`] with other timing.
    pub(crate) fn start_with(lab: &Lab, place: Place, url: &str, opts: PollerOpts) -> Poller {
        assert!(
            !opts.interval.is_zero() && !opts.timeout.is_zero(),
            "Poller: interval and timeout must not be zero: {opts:?}"
        );
        let ns = std::fs::File::open(lab.netns_path(place))
            .unwrap_or_else(|e| panic!("Poller: open {}: {e}", lab.netns_path(place).display()));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let thread = {
            let (samples, stop, url) = (samples.clone(), stop.clone(), url.to_string());
            std::thread::Builder::new()
                .name(format!("poller {place:?}"))
                .spawn(move || poll_loop(&ns, &url, start, opts, &samples, &stop))
                .expect("spawn poller thread")
        };
        Poller {
            url: url.to_string(),
            start,
            opts,
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// Time since the poller started: mark an event with it.
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The URL it polls.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Every sample so far, oldest first.
    pub(crate) fn results(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The first `200 OK` of a request that started at or after `t`.
    pub(crate) fn first_ok_after(&self, t: Duration) -> Option<Sample> {
        first_ok_after(&self.results(), t)
    }

    /// Waits at most `timeout` (and never past the poller's end) for
    /// [`Poller::first_ok_after`]`(t)`.
    pub(crate) fn wait_ok_after(&self, t: Duration, timeout: Duration) -> Option<Sample> {
        poll_until(timeout, || match self.first_ok_after(t) {
            Some(s) => Some(Some(s)),
            None if !self.is_running() => Some(None),
            None => None,
        })
        .flatten()
        .or_else(|| self.first_ok_after(t))
    }

    /// Whether the polling thread still runs (it ends after `max`).
    pub(crate) fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// [`report`] of the samples so far.
    pub(crate) fn report(&self) -> String {
        format!(
            "GET {} every {:?}:\n{}",
            self.url,
            self.opts.interval,
            report(&self.results())
        )
    }

    /// Stops polling (waiting for the request under way, at most its
    /// timeout) and returns every sample.
    pub(crate) fn stop(mut self) -> Vec<Sample> {
        self.halt();
        self.results()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                eprintln!("web: poller thread for {} panicked", self.url);
            }
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.halt();
    }
}

fn poll_loop(
    ns: &std::fs::File,
    url: &str,
    start: Instant,
    opts: PollerOpts,
    samples: &Mutex<Vec<Sample>>,
    stop: &AtomicBool,
) {
    let push = |s: Sample| samples.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    if let Err(e) = lab::enter_netns_file(ns) {
        push(Sample {
            at: start.elapsed(),
            took: Duration::ZERO,
            result: Err(format!("GET {url}: cannot enter the namespace: {e}")),
        });
        return;
    }
    let end = start + opts.max;
    // Bounded by `max` and, should the clock misbehave, by a count.
    let rounds = opts.max.as_millis() / opts.interval.as_millis().max(1) + 2;
    for _ in 0..rounds {
        let t0 = Instant::now();
        if stop.load(Ordering::Relaxed) || t0 >= end {
            break;
        }
        let result = http_get_here(url, opts.timeout).map(|(status, body)| Reply {
            status,
            len: body.len(),
            hash: body_hash(&body),
        });
        push(Sample {
            at: t0 - start,
            took: t0.elapsed(),
            result,
        });
        let next = t0 + opts.interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
}

/// The first `200 OK` among `samples` that started at or after `t`.
pub(crate) fn first_ok_after(samples: &[Sample], t: Duration) -> Option<Sample> {
    samples.iter().find(|s| s.at >= t && s.is_ok()).cloned()
}

/// The samples as runs of the same outcome, one line each, for assertion
/// messages: `  0.012s..  1.462s  x30  200 (20 bytes, hash 1a2b3c4d)`.
pub(crate) fn report(samples: &[Sample]) -> String {
    let mut out = String::new();
    let mut i = 0;
    // Bounded: each round consumes at least one sample.
    while i < samples.len() {
        let kind = samples[i].kind();
        let mut j = i + 1;
        while j < samples.len() && samples[j].kind() == kind {
            j += 1;
        }
        let _ = writeln!(
            out,
            "  {:7.3}s..{:7.3}s  x{:<4} {kind}",
            samples[i].at.as_secs_f64(),
            samples[j - 1].at.as_secs_f64(),
            j - i
        );
        i = j;
    }
    if samples.is_empty() {
        out.push_str("  (no samples)\n");
    }
    out
}

// ---------------------------------------------------------------------------
// Tests that need no lab (loopback in the test's own namespace)

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    /// Serves one connection on loopback with `response` (after reading the
    /// request head), and returns the URL and the thread (which yields the
    /// request it read).
    fn serve_once(response: Vec<u8>) -> (String, JoinHandle<String>) {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind loopback");
        let url = format!("http://{}/some/page.html", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            // Bounded: at most 64 reads of the request head.
            for _ in 0..64 {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
                if req.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let _ = s.write_all(&response);
            String::from_utf8_lossy(&req).into_owned()
        });
        (url, h)
    }

    #[test]
    fn lab_web_http_get_returns_status_and_body_and_sends_http10() {
        let (url, h) = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nContent-Type: text/plain\r\n\r\nhello\n"
                .to_vec(),
        );
        let (status, body) = http_get_here(&url, Duration::from_secs(5)).expect("GET");
        assert_eq!(status, 200);
        assert_eq!(body, b"hello\n");
        let req = h.join().unwrap();
        assert!(
            req.starts_with("GET /some/page.html HTTP/1.0\r\n"),
            "{req:?}"
        );
        assert!(req.contains("\r\nHost: 127.0.0.1:"), "{req:?}");
    }

    #[test]
    fn lab_web_http_get_reports_short_bodies_and_404s() {
        let (url, h) = serve_once(b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nshort".to_vec());
        let e = http_get_here(&url, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("Content-Length 10 but 5 body bytes"), "{e}");
        assert!(e.starts_with(&format!("GET {url}: response:")), "{e}");
        h.join().unwrap();

        let (url, h) = serve_once(b"HTTP/1.1 404 Not Found\r\n\r\n".to_vec());
        assert_eq!(
            http_get_here(&url, Duration::from_secs(5)),
            Ok((404, vec![]))
        );
        h.join().unwrap();
    }

    #[test]
    fn lab_web_http_get_times_out_on_a_silent_server() {
        // Accepted by the kernel (backlog), never answered.
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind loopback");
        let url = format!("http://{}/", l.local_addr().unwrap());
        let e = http_get_here(&url, Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("receive") && e.contains("200ms"), "{e}");
        drop(l);
    }

    #[test]
    fn lab_web_http_get_names_connect_errors_and_bad_urls() {
        // A port that was free a moment ago: connection refused.
        let port = {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}/");
        let e = http_get_here(&url, Duration::from_secs(2)).unwrap_err();
        assert!(e.starts_with(&format!("GET {url}: connect:")), "{e}");

        let e = http_get_here("http://example.invalid/", Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("not an IP address"), "{e}");
        let e = http_get_here("https://10.0.0.1/", Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("only http://"), "{e}");
        assert_eq!(
            parse_url("http://10.202.3.10").unwrap(),
            (
                "10.202.3.10:80".parse().unwrap(),
                "10.202.3.10".into(),
                "/".into()
            )
        );
    }

    #[test]
    fn lab_web_report_groups_runs_and_first_ok_after_skips_earlier() {
        let ok = |ms: u64, hash: u64| Sample {
            at: Duration::from_millis(ms),
            took: Duration::from_millis(1),
            result: Ok(Reply {
                status: 200,
                len: 5,
                hash,
            }),
        };
        let err = |ms: u64, bytes: usize| Sample {
            at: Duration::from_millis(ms),
            took: Duration::from_millis(200),
            result: Err(format!(
                "GET http://10.202.0.10/: receive: timed out after 200ms ({bytes} bytes so far)"
            )),
        };
        let samples = vec![ok(0, 1), ok(50, 1), err(100, 0), err(350, 7), ok(600, 2)];
        let r = report(&samples);
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines.len(), 3, "{r}");
        assert!(
            lines[0].contains("x2") && lines[0].contains("200 (5 bytes"),
            "{r}"
        );
        assert!(
            lines[1].contains("x2") && lines[1].contains("receive: timed out after 200ms"),
            "{r}"
        );
        assert!(lines[2].contains("x1"), "{r}");
        assert_eq!(
            first_ok_after(&samples, Duration::from_millis(60)),
            Some(ok(600, 2))
        );
        assert_eq!(first_ok_after(&samples, Duration::ZERO), Some(ok(0, 1)));
        assert_eq!(first_ok_after(&samples, Duration::from_millis(601)), None);
    }

    #[test]
    fn lab_web_apache_conf_is_what_the_supervisor_config_takes() {
        let dir = crate::harness::util::tempdir("twinfs-web-");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let conf = ApacheConf::write(dir.path(), &root, None, 8080);
        let text = std::fs::read_to_string(conf.conf_path()).unwrap();
        assert!(text.contains("\nListen 8080\n"), "{text}");
        assert!(text.contains(&format!("PidFile \"{}\"", conf.pidfile().display())));
        assert!(text.contains(&format!("DocumentRoot \"{}\"", root.display())));
        assert_eq!(conf.start_argv()[2], "start");
        assert_eq!(conf.stop_argv()[2], "stop");
        assert!(Path::new(&conf.start_argv()[1]).is_file());
        // No Apache runs from this config.
        assert_eq!(conf.running_pid(), None);

        let toml = conf.services_toml("apache2");
        let v: toml::Value = toml::from_str(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let svc = &v["failover"]["services"]["apache2"];
        let start: Vec<&str> = svc["start"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(start, conf.start_argv());
        assert_eq!(
            svc["pidfile"].as_str(),
            Some(conf.pidfile().to_str().unwrap())
        );

        let conf = ApacheConf::write(dir.path(), &root, Some("10.202.0.10".parse().unwrap()), 80);
        let text = std::fs::read_to_string(conf.conf_path()).unwrap();
        assert!(text.contains("\nListen 10.202.0.10:80\n"), "{text}");
    }
}
