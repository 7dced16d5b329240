//! Acceptance: Apache (Debian's `apache2`, a private config on a loopback port,
//! not via systemd) serves a DocumentRoot on a twinfs mount; many small files
//! and a 10 MiB file come back byte-exact over HTTP.
//!
//! The HTTP client is the harness's (`web::http_get_here`: one request per
//! connection, the body checked against Content-Length), so the test needs
//! nothing but apache2.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::apache::{self, APACHE_BIN};
use crate::harness::util::{self, pattern};
use crate::harness::web::http_get_here;

/// How long Apache may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long Apache may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Deadline of one GET (connect, send, receive).
const IO_TIMEOUT: Duration = Duration::from_secs(30);

const SMALL_FILES: usize = 1000;
const SMALL_SIZE: usize = 4096;
const SMALL_DIRS: usize = 10;
const BIG_SIZE: usize = 10 * 1024 * 1024;

/// A port on 127.0.0.1 that was free a moment ago.
fn find_free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Content of small file `i`: a readable header naming the file, then noise.
fn small_content(i: usize) -> Vec<u8> {
    let mut v = format!("small file {i:04}\n").into_bytes();
    v.extend(pattern(i as u64 + 1, SMALL_SIZE - v.len()));
    v
}

fn small_url(i: usize) -> String {
    format!("/d{:02}/f{i:04}.bin", i % SMALL_DIRS)
}

/// A private Apache: its config, pid file, logs and runtime dir in a tempdir.
/// Stopped (by pid) on drop, also while a test panics.
struct Apache {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Apache {
    fn start(docroot: &Path) -> Apache {
        let dir = util::tempdir("twinfs-apache-");
        let d = dir.path();
        let port = find_free_port();
        // The lab's Apache config; sendfile and mmap on, so that Apache
        // reads the mount the way a production server would.
        let files = apache::write(
            d,
            docroot,
            Some(Ipv4Addr::LOCALHOST.into()),
            port,
            "EnableSendfile On\nEnableMMAP On\n",
        )
        .unwrap_or_else(|e| panic!("writing the Apache config: {e}"));
        let conf_path = files.conf;
        let out = std::fs::File::create(d.join("stdout.log")).expect("create stdout.log");
        let err = std::fs::File::create(d.join("stderr.log")).expect("create stderr.log");
        let child = Command::new(APACHE_BIN)
            .arg("-f")
            .arg(&conf_path)
            .arg("-DFOREGROUND")
            .env("APACHE_RUN_DIR", d)
            .env("APACHE_LOCK_DIR", d)
            .env("APACHE_LOG_DIR", d)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {APACHE_BIN}: {e}"));
        let mut a = Apache {
            child: Some(child),
            dir,
            port,
        };
        a.wait_listening();
        a
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for f in ["stderr.log", "error.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
            s.push_str(&format!("--- {f}:\n{text}"));
        }
        s
    }

    fn wait_listening(&mut self) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let child = self.child.as_mut().expect("apache child");
        let exited = util::poll_until(START_TIMEOUT, || {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Some(None);
            }
            child.try_wait().ok().flatten().map(Some)
        });
        match exited {
            Some(None) => {}
            Some(Some(status)) => {
                self.child = None;
                panic!(
                    "apache2 exited with {status} before listening on {addr}:\n{}",
                    self.logs()
                );
            }
            None => panic!(
                "apache2 did not listen on {addr} within {START_TIMEOUT:?}:\n{}",
                self.logs()
            ),
        }
    }

    /// `GET path`; returns (status code, body).
    fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        http_get_here(&url, IO_TIMEOUT).unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            util::stop_child(&mut child, STOP_TIMEOUT);
        }
    }
}

/// Index of the first differing byte, for readable failures.
fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or(if a.len() == b.len() {
            None
        } else {
            Some(a.len().min(b.len()))
        })
}

fn assert_body(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        panic!(
            "{what}: body differs: got {} bytes, want {}, first difference at byte {:?}",
            got.len(),
            want.len(),
            first_diff(got, want)
        );
    }
}

#[test]
fn apache_serves_small_and_large_files_byte_exact() {
    if !util::require_fuse("apache_serves_small_and_large_files_byte_exact")
        || !crate::harness::web::require_apache("apache_serves_small_and_large_files_byte_exact")
    {
        return;
    }
    let m = util::Mounted::start();
    // The tempdir holding mnt/ is 0700; Apache's workers run as www-data.
    use std::os::unix::fs::PermissionsExt;
    let parent = m.mnt.parent().expect("mount point has a parent");
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
        .expect("chmod tempdir");
    std::fs::set_permissions(&m.mnt, std::fs::Permissions::from_mode(0o755))
        .expect("chmod mount root");

    // Populate the DocumentRoot through the mount.
    for d in 0..SMALL_DIRS {
        std::fs::create_dir(m.mnt.join(format!("d{d:02}"))).expect("mkdir");
    }
    // Modes are set explicitly: Apache runs as www-data and the test's umask
    // is not ours to rely on.
    let readable = std::fs::Permissions::from_mode(0o644);
    for d in 0..SMALL_DIRS {
        let p = m.mnt.join(format!("d{d:02}"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    }
    for i in 0..SMALL_FILES {
        let p = m.mnt.join(&small_url(i)[1..]);
        std::fs::write(&p, small_content(i))
            .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        std::fs::set_permissions(&p, readable.clone()).expect("chmod file");
    }
    let big = pattern(0xB16, BIG_SIZE);
    std::fs::write(m.mnt.join("big.bin"), &big).expect("write big.bin");
    std::fs::write(m.mnt.join("index.html"), b"<html>twinfs</html>\n").expect("write index.html");
    for f in ["big.bin", "index.html"] {
        std::fs::set_permissions(m.mnt.join(f), readable.clone()).expect("chmod file");
    }

    let apache = Apache::start(&m.mnt);
    assert_eq!(
        util::mounted_fstype(&m.mnt).as_deref(),
        Some("fuse.twinfs"),
        "DocumentRoot must be the twinfs mount"
    );

    // The index and a 404 show that Apache really serves this tree.
    let (st, body) = apache.get("/");
    assert_eq!(st, 200, "GET / (DirectoryIndex)");
    assert_body("GET /", &body, b"<html>twinfs</html>\n");
    let (st, _) = apache.get("/no-such-file.bin");
    assert_eq!(st, 404, "GET of a missing file");

    // Many small files, each distinct, byte-exact.
    let t = Instant::now();
    for i in 0..SMALL_FILES {
        let url = small_url(i);
        let (st, body) = apache.get(&url);
        assert_eq!(st, 200, "GET {url}");
        assert_body(&url, &body, &small_content(i));
    }
    eprintln!("apache: {SMALL_FILES} small files in {:?}", t.elapsed());

    // The 10 MiB file, cold then warm.
    for pass in ["cold", "warm"] {
        let t = Instant::now();
        let (st, body) = apache.get("/big.bin");
        assert_eq!(st, 200, "GET /big.bin ({pass})");
        assert_body(&format!("/big.bin ({pass})"), &body, &big);
        eprintln!("apache: 10 MiB file ({pass}) in {:?}", t.elapsed());
    }

    // A write through the mount is what Apache serves next (no stale cache):
    // a same-size rewrite, a shorter one, and a new file.
    let url = small_url(7);
    let changed = pattern(0x0C4A_06ED, SMALL_SIZE);
    std::fs::write(m.mnt.join(&url[1..]), &changed).expect("rewrite small file");
    let (st, body) = apache.get(&url);
    assert_eq!(st, 200);
    assert_body(&format!("{url} after same-size rewrite"), &body, &changed);
    std::fs::write(m.mnt.join(&url[1..]), b"short\n").expect("shorten small file");
    let (st, body) = apache.get(&url);
    assert_eq!(st, 200);
    assert_body(&format!("{url} after shortening"), &body, b"short\n");
    std::fs::write(m.mnt.join("new.txt"), b"new file\n").expect("write new.txt");
    std::fs::set_permissions(m.mnt.join("new.txt"), readable).expect("chmod new.txt");
    let (st, body) = apache.get("/new.txt");
    assert_eq!(st, 200, "GET /new.txt");
    assert_body("/new.txt", &body, b"new file\n");

    drop(apache);
    m.stop();
}
