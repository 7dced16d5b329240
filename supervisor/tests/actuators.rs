//! The real actuators against the real system: exec, HTTP and services on
//! this machine; VIP, ARP and ping between two network namespaces that each
//! test creates (`twl-<pid>-<test>-a` / `-b`, joined by a veth pair, with
//! addresses from 192.0.2.0/24 and 2001:db8::/64, which exist only there).
//!
//! The namespace tests need root and the `ip` tool: without them they skip
//! with a message, except under `CI=true`, where they fail.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use twinfs_supervisor::actions::{Actuators, HttpCheck, ServiceState, Vip};
use twinfs_supervisor::actuators::{ping, ServiceBackend, ServiceCommands, System, SystemOptions};

fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------- exec

#[test]
fn exec_captures_output_and_exit_code() {
    let sys = System::default();
    let r = sys
        .exec(
            &argv(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(r.code, Some(3));
    assert_eq!(r.stdout, "out\n");
    assert_eq!(r.stderr, "err\n");
    assert!(!r.timed_out);
}

#[test]
fn exec_timeout_kills_the_process_group() {
    let sys = System::default();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("sleep.pid");
    // sh starts sleep in the background and waits: killing only sh would
    // leave the sleep running.
    let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
    let r = sys
        .exec(&argv(&["sh", "-c", &script]), Duration::from_millis(300))
        .unwrap();
    assert!(r.timed_out);
    assert_eq!(r.code, None);
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || !alive(pid)),
        "the background sleep (pid {pid}) survived the timeout"
    );
}

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
        })
        .is_some_and(|zombie| !zombie)
}

/// Polls `f` every 20 ms until it is true or `limit` passed.
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    for _ in 0..(limit.as_millis() / 20 + 2) {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

// ---------------------------------------------------------------- http

/// Serves `answer` to one connection on a loopback port; returns the URL.
fn one_shot_server(answer: &'static str) -> (String, thread::JoinHandle<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/health", l.local_addr().unwrap());
    let h = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        // Bounded: at most 64 reads, each at most 5 s.
        for _ in 0..64 {
            if req.ends_with(b"\r\n\r\n") {
                break;
            }
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "client closed before the end of its request");
            req.extend_from_slice(&buf[..n]);
        }
        s.write_all(answer.as_bytes()).unwrap();
        String::from_utf8(req).unwrap()
    });
    (url, h)
}

fn check(url: &str, body: Option<&str>) -> HttpCheck {
    HttpCheck {
        url: url.to_string(),
        expect_status: 200,
        expect_body: body.map(String::from),
        timeout: Duration::from_secs(5),
    }
}

#[test]
fn http_check_reports_200_with_body() {
    let (url, h) = one_shot_server("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nall good ok\n");
    let a = System::default()
        .http_check(&check(&url, Some("good")))
        .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.body_bytes, 12);
    let req = h.join().unwrap();
    assert!(req.starts_with("GET /health HTTP/1.1\r\n"), "{req}");
    assert!(req.contains("\r\nHost: 127.0.0.1:"), "{req}");
}

#[test]
fn http_check_500_is_an_answer() {
    let (url, h) = one_shot_server("HTTP/1.0 500 Internal Server Error\r\n\r\nboom");
    let a = System::default().http_check(&check(&url, None)).unwrap();
    assert_eq!((a.status, a.body_bytes), (500, 4));
    h.join().unwrap();
}

#[test]
fn http_check_body_mismatch_is_an_error() {
    let (url, h) = one_shot_server("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    let e = System::default()
        .http_check(&check(&url, Some("It works")))
        .unwrap_err();
    assert!(e.0.contains("does not contain \"It works\""), "{e}");
    h.join().unwrap();
}

#[test]
fn http_check_refused_and_https() {
    // A port that was free a moment ago: bind, note it, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/");
    let e = System::default()
        .http_check(&check(&url, None))
        .unwrap_err();
    assert!(
        e.0.starts_with(&format!("GET {url}: connect to 127.0.0.1:{port}")),
        "{e}"
    );
    let e = System::default()
        .http_check(&check("https://127.0.0.1/", None))
        .unwrap_err();
    assert!(e.0.contains("https is not supported"), "{e}");
}

#[test]
fn http_check_times_out_on_a_silent_server() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", l.local_addr().unwrap());
    let mut c = check(&url, None);
    c.timeout = Duration::from_millis(300);
    let e = System::default().http_check(&c).unwrap_err();
    assert!(e.0.contains("no complete answer within 300ms"), "{e}");
    drop(l);
}

// ---------------------------------------------------------------- services

/// A fake daemon driven by `sh -c` scripts, keeping its pid file in `dir`.
/// Stopping takes a while (the daemon traps TERM and lingers 300 ms), so a
/// stop that did not wait would be caught.
fn fake_service(dir: &Path) -> ServiceCommands {
    let pid = dir.join("svc.pid");
    let p = pid.display();
    ServiceCommands {
        start: argv(&[
            "sh",
            "-c",
            &format!(
                "sh -c 'trap \"sleep 0.3; rm -f {p}; exit 0\" TERM; while :; do sleep 0.05; done' </dev/null >/dev/null 2>&1 & echo $! > {p}"
            ),
        ]),
        stop: argv(&["sh", "-c", &format!("kill $(cat {p})")]),
        status: None,
        pidfile: Some(pid),
    }
}

#[test]
fn services_with_commands_start_status_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut services = BTreeMap::new();
    services.insert("fake".to_string(), fake_service(dir.path()));
    let sys = System::new(SystemOptions {
        services,
        backend: Some(ServiceBackend::Commands),
        stop_timeout: Duration::from_secs(10),
        ..Default::default()
    });
    // Stopping a stopped service is fine.
    assert_eq!(sys.service_status("fake").unwrap(), ServiceState::Stopped);
    sys.service_stop("fake").unwrap();

    sys.service_start("fake").unwrap();
    assert_eq!(sys.service_status("fake").unwrap(), ServiceState::Running);
    let pid: u32 = std::fs::read_to_string(dir.path().join("svc.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Starting a running one is fine and starts no second copy.
    sys.service_start("fake").unwrap();
    let pid2: u32 = std::fs::read_to_string(dir.path().join("svc.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, pid2);

    let guard = KillOnDrop(pid);
    sys.service_stop("fake").unwrap();
    // stop returned: the process must already be gone, not merely signalled.
    assert!(
        !alive(pid),
        "service_stop returned while pid {pid} still runs"
    );
    assert_eq!(sys.service_status("fake").unwrap(), ServiceState::Stopped);
    sys.service_stop("fake").unwrap();
    drop(guard);
}

#[test]
fn service_stop_gives_up_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut svc = fake_service(dir.path());
    // A stop command that does nothing: the service never goes away.
    svc.stop = argv(&["true"]);
    let mut services = BTreeMap::new();
    services.insert("stubborn".to_string(), svc);
    let sys = System::new(SystemOptions {
        services,
        backend: Some(ServiceBackend::Commands),
        stop_timeout: Duration::from_millis(300),
        ..Default::default()
    });
    sys.service_start("stubborn").unwrap();
    let pid: u32 = std::fs::read_to_string(dir.path().join("svc.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _guard = KillOnDrop(pid);
    let e = sys.service_stop("stubborn").unwrap_err();
    assert!(
        e.0.contains("service stubborn still running 300ms after `true` (pid"),
        "{e}"
    );
}

#[test]
fn service_command_failure_quotes_command_and_stderr() {
    let mut services = BTreeMap::new();
    services.insert(
        "broken".to_string(),
        ServiceCommands {
            start: argv(&["sh", "-c", "echo 'AH00558: could not bind' >&2; exit 1"]),
            stop: argv(&["true"]),
            status: Some(argv(&["false"])),
            pidfile: None,
        },
    );
    let sys = System::new(SystemOptions {
        services,
        ..Default::default()
    });
    let e = sys.service_start("broken").unwrap_err();
    assert!(e.0.starts_with("sh -c 'echo "), "{e}");
    assert!(
        e.0.ends_with("exited with code 1: AH00558: could not bind"),
        "{e}"
    );
}

/// Kills a test's daemon by pid if the test fails half-way.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0 as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

// ---------------------------------------------------------------- namespaces

/// Whether the namespace tests can run; panics in CI when they cannot.
fn lab_possible() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && ip {
        return true;
    }
    let why = format!("needs root ({root}) and the ip tool ({ip})");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("namespace test cannot run under CI=true: {why}");
    }
    eprintln!("skipped: {why}");
    false
}

fn sh_ok(args: &[&str]) -> String {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        o.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Two namespaces joined by a veth pair: `va` (192.0.2.1, 2001:db8::1) in
/// `a`, `vb` (192.0.2.2, 2001:db8::2) in `b`. Deleted on drop, also when
/// the test panics.
struct Pair {
    a: String,
    b: String,
}

const VIP4: &str = "192.0.2.10";
const VIP6: &str = "2001:db8::10";

impl Pair {
    fn new(tag: &str) -> Pair {
        let base = format!("twl-{}-{tag}", std::process::id());
        let pair = Pair {
            a: format!("{base}-a"),
            b: format!("{base}-b"),
        };
        // Leftovers from a killed run with the same pid.
        let _ = Command::new("ip").args(["netns", "del", &pair.a]).output();
        let _ = Command::new("ip").args(["netns", "del", &pair.b]).output();
        sh_ok(&["ip", "netns", "add", &pair.a]);
        sh_ok(&["ip", "netns", "add", &pair.b]);
        sh_ok(&[
            "ip", "link", "add", "va", "netns", &pair.a, "type", "veth", "peer", "name", "vb",
            "netns", &pair.b,
        ]);
        for (ns, dev, v4, v6) in [
            (&pair.a, "va", "192.0.2.1/24", "2001:db8::1/64"),
            (&pair.b, "vb", "192.0.2.2/24", "2001:db8::2/64"),
        ] {
            sh_ok(&["ip", "-n", ns, "addr", "add", v4, "dev", dev]);
            sh_ok(&["ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad"]);
            sh_ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh_ok(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        for (ns, dev) in [(&pair.a, "va"), (&pair.b, "vb")] {
            assert!(
                wait_for(Duration::from_secs(5), || {
                    sh_ok(&["ip", "-n", ns, "-o", "link", "show", "dev", dev]).contains("LOWER_UP")
                }),
                "{dev} in {ns} never got a carrier"
            );
        }
        pair
    }

    fn mac(&self, ns: &str, dev: &str) -> String {
        let out = sh_ok(&["ip", "-n", ns, "-o", "link", "show", "dev", dev]);
        let i = out
            .find("link/ether ")
            .expect("no link/ether in ip link output");
        out[i + 11..i + 28].to_string()
    }

    fn neigh(&self, ns: &str, dev: &str, addr: &str) -> String {
        sh_ok(&["ip", "-n", ns, "neigh", "show", addr, "dev", dev])
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread that has entered namespace `ns` (commands it starts
/// inherit the namespace too). A panic in `f` is the caller's panic.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|s| {
        let h = s.spawn(|| {
            let fd = File::open(format!("/run/netns/{ns}")).expect("open the namespace");
            setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        });
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

fn vip(addr: &str, prefix: u8, dev: &str) -> Vip {
    Vip {
        addr: addr.parse().unwrap(),
        prefix,
        dev: dev.to_string(),
    }
}

fn quick_system(garp_count: u32) -> System {
    System::new(SystemOptions {
        arp_probe: Duration::from_millis(200),
        garp_count,
        garp_interval: Duration::from_millis(20),
        ..Default::default()
    })
}

#[test]
fn vip_claim_is_idempotent_release_removes_and_peers_reach_it() {
    if !lab_possible() {
        return;
    }
    let pair = Pair::new("claim");
    let v = vip(VIP4, 24, "va");
    let sys = quick_system(3);

    let (first, second, listener) = in_ns(&pair.a, || {
        assert!(!sys.vip_held(&v).unwrap());
        let first = sys.vip_claim(&v).unwrap();
        assert!(sys.vip_held(&v).unwrap());
        let second = sys.vip_claim(&v).unwrap();
        let listener = TcpListener::bind((VIP4, 8080)).unwrap();
        (first, second, listener)
    });
    assert!(!first.already_held);
    assert_eq!(first.conflict, None, "nobody else holds the VIP");
    assert_eq!(first.announcements, 3);
    assert!(second.already_held);
    assert_eq!(second.conflict, None);
    let addrs = sh_ok(&["ip", "-n", &pair.a, "-o", "addr", "show", "dev", "va"]);
    assert_eq!(addrs.matches("inet 192.0.2.10/24").count(), 1, "{addrs}");

    // From the other namespace: ping and a TCP connection to the VIP.
    in_ns(&pair.b, || {
        assert!(
            ping(VIP4.parse().unwrap(), Duration::from_secs(3)).unwrap(),
            "the VIP does not answer pings"
        );
        let to = SocketAddr::new(VIP4.parse().unwrap(), 8080);
        TcpStream::connect_timeout(&to, Duration::from_secs(3)).expect("TCP connect to the VIP");
    });
    drop(listener);

    in_ns(&pair.a, || {
        sys.vip_release(&v).unwrap();
        assert!(!sys.vip_held(&v).unwrap());
        sys.vip_release(&v).unwrap();
        let e = sys.vip_announce(&v).unwrap_err();
        assert!(e.0.contains("not held here"), "{e}");
    });
    let addrs = sh_ok(&["ip", "-n", &pair.a, "-o", "addr", "show", "dev", "va"]);
    assert!(!addrs.contains("192.0.2.10"), "{addrs}");
    in_ns(&pair.b, || {
        assert!(
            !ping(VIP4.parse().unwrap(), Duration::from_millis(500)).unwrap(),
            "released VIP still answers"
        );
    });
}

#[test]
fn gratuitous_arp_moves_the_neighbour_entry() {
    if !lab_possible() {
        return;
    }
    let pair = Pair::new("garp");
    let mac_a = pair.mac(&pair.a, "va");
    // b believes the VIP lives at some other MAC (the old primary). Linux
    // only updates an existing entry from a gratuitous ARP, so the entry is
    // made here, stale, and nothing in b sends to the VIP meanwhile.
    let old = "02:00:00:00:00:99";
    sh_ok(&[
        "ip", "-n", &pair.b, "neigh", "replace", VIP4, "lladdr", old, "dev", "vb", "nud", "stale",
    ]);
    assert!(pair.neigh(&pair.b, "vb", VIP4).contains(old));

    let sys = quick_system(1);
    let v = vip(VIP4, 24, "va");
    let claim = in_ns(&pair.a, || sys.vip_claim(&v).unwrap());
    assert_eq!(claim.announcements, 1);
    assert!(
        wait_for(Duration::from_secs(2), || pair
            .neigh(&pair.b, "vb", VIP4)
            .contains(&mac_a)),
        "b's neighbour entry did not move to {mac_a}: {}",
        pair.neigh(&pair.b, "vb", VIP4)
    );

    // Announce again after the entry was pointed elsewhere once more.
    sh_ok(&[
        "ip", "-n", &pair.b, "neigh", "replace", VIP4, "lladdr", old, "dev", "vb", "nud", "stale",
    ]);
    let n = in_ns(&pair.a, || sys.vip_announce(&v).unwrap());
    assert_eq!(n, 1);
    assert!(
        wait_for(Duration::from_secs(2), || pair
            .neigh(&pair.b, "vb", VIP4)
            .contains(&mac_a)),
        "vip_announce did not move b's entry: {}",
        pair.neigh(&pair.b, "vb", VIP4)
    );
}

#[test]
fn duplicate_probe_reports_the_other_holder() {
    if !lab_possible() {
        return;
    }
    let pair = Pair::new("dup");
    let mac_b = pair.mac(&pair.b, "vb");
    sh_ok(&[
        "ip",
        "-n",
        &pair.b,
        "addr",
        "add",
        "192.0.2.10/24",
        "dev",
        "vb",
    ]);
    let sys = quick_system(3);
    let claim = in_ns(&pair.a, || sys.vip_claim(&vip(VIP4, 24, "va")).unwrap());
    assert_eq!(claim.conflict.as_deref(), Some(mac_b.as_str()));
    assert_eq!(
        claim.announcements, 0,
        "a conflicting claim must not announce"
    );
}

#[test]
fn ipv6_vip_is_added_and_announced() {
    if !lab_possible() {
        return;
    }
    let pair = Pair::new("v6");
    let mac_a = pair.mac(&pair.a, "va");
    let old = "02:00:00:00:00:99";
    sh_ok(&[
        "ip", "-n", &pair.b, "-6", "neigh", "replace", VIP6, "lladdr", old, "dev", "vb", "nud",
        "stale",
    ]);
    let sys = quick_system(1);
    let v = vip(VIP6, 64, "va");
    let claim = in_ns(&pair.a, || sys.vip_claim(&v).unwrap());
    assert_eq!(
        (claim.already_held, claim.announcements, claim.conflict),
        (false, 1, None)
    );
    assert!(
        wait_for(Duration::from_secs(2), || pair
            .neigh(&pair.b, "vb", VIP6)
            .contains(&mac_a)),
        "unsolicited NA did not move b's entry to {mac_a}: {}",
        pair.neigh(&pair.b, "vb", VIP6)
    );
    in_ns(&pair.b, || {
        assert!(
            ping(VIP6.parse().unwrap(), Duration::from_secs(3)).unwrap(),
            "IPv6 VIP does not answer"
        );
    });
    in_ns(&pair.a, || {
        sys.vip_release(&v).unwrap();
        assert!(!sys.vip_held(&v).unwrap());
    });
}

#[test]
fn ping_answers_for_a_peer_and_not_for_an_unused_address() {
    if !lab_possible() {
        return;
    }
    let pair = Pair::new("ping");
    in_ns(&pair.a, || {
        let peer: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(ping(peer, Duration::from_secs(3)).unwrap());
        let unused: IpAddr = "192.0.2.99".parse().unwrap();
        assert!(!ping(unused, Duration::from_millis(400)).unwrap());
        let peer6: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(ping(peer6, Duration::from_secs(3)).unwrap());
    });
}

#[test]
fn claim_on_a_missing_interface_names_it() {
    if !lab_possible() {
        return;
    }
    let pair = Pair::new("nodev");
    let e = in_ns(&pair.a, || {
        System::default()
            .vip_claim(&vip(VIP4, 24, "nosuch0"))
            .unwrap_err()
    });
    assert!(e.0.starts_with("ip -o addr show dev nosuch0: "), "{e}");
    assert!(e.0.contains("nosuch0"), "{e}");
}

#[test]
fn later_announcements_follow_in_the_background_and_stop_on_release() {
    if !lab_possible() {
        return;
    }
    let pair = Pair::new("series");
    let mac_a = pair.mac(&pair.a, "va");
    let old = "02:00:00:00:00:99";
    let point_elsewhere = || {
        sh_ok(&[
            "ip", "-n", &pair.b, "neigh", "replace", VIP4, "lladdr", old, "dev", "vb", "nud",
            "stale",
        ]);
    };
    // Announcements 500 ms apart: wide enough for the commands run between
    // them here, even on a busy machine.
    let sys = System::new(SystemOptions {
        garp_count: 3,
        garp_interval: Duration::from_millis(500),
        ..Default::default()
    });
    let v = vip(VIP4, 24, "va");

    point_elsewhere();
    let claim = in_ns(&pair.a, || sys.vip_claim(&v).unwrap());
    assert_eq!(claim.announcements, 3);
    // The first announcement went out before the claim returned; point the
    // entry elsewhere again: one of the two later ones must move it back.
    assert!(wait_for(Duration::from_secs(2), || pair
        .neigh(&pair.b, "vb", VIP4)
        .contains(&mac_a)));
    point_elsewhere();
    assert!(
        wait_for(Duration::from_secs(3), || pair
            .neigh(&pair.b, "vb", VIP4)
            .contains(&mac_a)),
        "no later announcement: {}",
        pair.neigh(&pair.b, "vb", VIP4)
    );

    // A release cancels the announcements still scheduled.
    in_ns(&pair.a, || {
        sys.vip_claim(&v).unwrap();
        sys.vip_release(&v).unwrap();
    });
    point_elsewhere();
    thread::sleep(Duration::from_millis(1300));
    assert!(
        pair.neigh(&pair.b, "vb", VIP4).contains(old),
        "an announcement followed the release: {}",
        pair.neigh(&pair.b, "vb", VIP4)
    );
}
