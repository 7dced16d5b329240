//! The packages and first-run setup (issue 5, items 1–3).
//!
//! - `deb_installs_checks_and_purges`: `scripts/package.sh --profile dev
//!   --no-build` packages the binary this test run built; the .deb is installed
//!   with dpkg on this machine (the CI machine), checked (files, modes,
//!   `systemd-analyze verify`, `twinfs --version`, the man page, completions,
//!   conffiles) and purged, also when the test fails half-way (a Drop guard).
//! - `rpm_metadata_and_scratch_root_install`: `rpm -qip/-qlp/-qcp` on the .rpm,
//!   then `rpm -i --root SCRATCH` and the files in SCRATCH.
//! - `init_writes_a_config_that_loads`: `twinfs init` into a temp dir (no root).
//!
//! The packaged binary is the debug build (`cargo deb --profile dev`): a release
//! build would add minutes to CI. Real packages come from `scripts/package.sh`,
//! which builds release.

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::harness::util::twinfs_bin;

/// Packaging the already-built binary takes seconds; a cold cargo-deb run
/// (dpkg-shlibdeps, compression) well under a minute.
const PACKAGE_TIMEOUT: Duration = Duration::from_secs(600);
/// dpkg, rpm, systemd-analyze, man: each a few seconds at most.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// `twinfs demo` with a built binary: about 10 s here.
const DEMO_TIMEOUT: Duration = Duration::from_secs(300);

/// The repository root (where Cargo.toml and scripts/ are).
fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// True when `test` can run here: root and every tool on PATH. Otherwise
/// skips with the reason, or panics under `CI=true`.
fn require(test: &str, tools: &[&str]) -> bool {
    let mut missing: Vec<String> = Vec::new();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        missing.push(format!("root (euid is {euid})"));
    }
    for t in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            missing.push((*t).to_owned());
        }
    }
    if missing.is_empty() {
        return true;
    }
    let reason = format!(
        "needs {} (scripts/setup-deps.sh test installs them)",
        missing.join(", ")
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: cannot run: {reason}");
    }
    eprintln!("skipping {test}: {reason}");
    false
}

/// What a command printed, and whether it succeeded.
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
    shown: String,
}

impl Ran {
    /// Panics with everything the command printed unless it succeeded.
    fn expect_ok(self) -> Ran {
        assert!(
            self.ok,
            "{} failed:\n--- stdout\n{}\n--- stderr\n{}",
            self.shown, self.stdout, self.stderr
        );
        self
    }
}

/// Runs `cmd` to completion within `timeout`; on timeout kills it (the child
/// this function started, by pid) and panics.
fn run(cmd: &mut Command, timeout: Duration) -> Ran {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        ok: status.success(),
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
        shown,
    }
}

struct Packages {
    deb: PathBuf,
    rpm: PathBuf,
}

/// Builds both packages once per test run, from the binary cargo built for it.
fn packages() -> &'static Packages {
    static BUILT: OnceLock<Packages> = OnceLock::new();
    BUILT.get_or_init(|| {
        let bin = twinfs_bin();
        let profile_dir = bin.parent().expect("binary dir");
        assert!(
            profile_dir.ends_with("debug"),
            "the test binary is not a dev-profile build: {}",
            bin.display()
        );
        let t0 = Instant::now();
        let ran = run(
            Command::new("bash")
                .arg(repo().join("scripts/package.sh"))
                .args(["--profile", "dev", "--no-build"])
                .current_dir(repo()),
            PACKAGE_TIMEOUT,
        )
        .expect_ok();
        eprintln!(
            "scripts/package.sh --profile dev --no-build: {:.1}s\n{}",
            t0.elapsed().as_secs_f64(),
            ran.stdout
        );
        let out = profile_dir.parent().expect("target dir").join("packages");
        let find = |ext: &str| {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&out)
                .unwrap_or_else(|e| panic!("{}: {e}", out.display()))
                .map(|e| e.expect("dir entry").path())
                .filter(|p| p.extension().is_some_and(|e| e == ext))
                .collect();
            assert_eq!(found.len(), 1, "one .{ext} in {}: {found:?}", out.display());
            found.remove(0)
        };
        Packages {
            deb: find("deb"),
            rpm: find("rpm"),
        }
    })
}

/// Every file the packages install, relative to the root, except the unit's
/// directory (which differs between Debian and RPM systems).
const FILES: &[&str] = &[
    "usr/bin/twinfs",
    "etc/twinfs/twinfs.toml",
    "etc/twinfs/failover.lua",
    "usr/share/man/man1/twinfs.1.gz",
    "usr/share/man/man1/twinfs-init.1.gz",
    "usr/share/man/man1/twinfs-run.1.gz",
    "usr/share/bash-completion/completions/twinfs",
    "usr/share/fish/vendor_completions.d/twinfs.fish",
];

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Purges the twinfs package when dropped, also while the test panics.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let ran = run(
            Command::new("dpkg").args(["--purge", "twinfs"]),
            TOOL_TIMEOUT,
        );
        if !ran.ok {
            eprintln!("cleanup: dpkg --purge twinfs failed: {}", ran.stderr);
        }
    }
}

fn dpkg_installed() -> bool {
    let ran = run(
        Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev}", "twinfs"]),
        TOOL_TIMEOUT,
    );
    ran.ok && ran.stdout.starts_with("ii")
}

#[test]
fn deb_installs_checks_and_purges() {
    let test = "deb_installs_checks_and_purges";
    if !require(
        test,
        &[
            "dpkg",
            "dpkg-query",
            "systemd-analyze",
            "man",
            "zcat",
            "cargo-deb",
            "cargo-generate-rpm",
        ],
    ) {
        return;
    }
    // A twinfs left installed by an earlier, killed run is ours to purge; files
    // at these paths without the package are an admin's, and are not touched.
    let leftover = run(
        Command::new("dpkg-query").args(["-W", "twinfs"]),
        TOOL_TIMEOUT,
    );
    if leftover.ok {
        drop(Purge);
    }
    for p in ["/etc/twinfs", "/var/lib/twinfs", "/usr/bin/twinfs"] {
        assert!(
            !Path::new(p).exists(),
            "{p} exists but the twinfs package is not installed: refusing to install over it"
        );
    }
    let pkgs = packages();
    let guard = Purge;
    let t0 = Instant::now();
    run(Command::new("dpkg").arg("-i").arg(&pkgs.deb), TOOL_TIMEOUT).expect_ok();
    eprintln!("dpkg -i: {:.1}s", t0.elapsed().as_secs_f64());
    assert!(dpkg_installed());

    let root = Path::new("/");
    for f in FILES {
        assert!(root.join(f).is_file(), "/{f} missing after dpkg -i");
    }
    assert!(root
        .join("usr/share/zsh/vendor-completions/_twinfs")
        .is_file());
    let unit = Path::new("/lib/systemd/system/twinfs.service");
    assert!(unit.is_file(), "{} missing", unit.display());
    assert_eq!(mode(Path::new("/usr/bin/twinfs")), 0o755);
    assert_eq!(
        std::fs::read_to_string("/etc/twinfs/twinfs.toml").unwrap(),
        std::fs::read_to_string(repo().join("packaging/twinfs.toml")).unwrap(),
        "the shipped config is the sample"
    );
    let data = Path::new("/var/lib/twinfs");
    assert!(data.is_dir(), "postinst creates /var/lib/twinfs");
    assert_eq!(mode(data), 0o700, "/var/lib/twinfs is root-only");

    // The unit: systemd accepts it (systemd need not be PID 1 for this).
    let verify = run(
        Command::new("systemd-analyze").args(["verify", &unit.display().to_string()]),
        TOOL_TIMEOUT,
    );
    assert!(
        verify.ok && !verify.stderr.contains("twinfs.service:"),
        "systemd-analyze verify:\n{}{}",
        verify.stdout,
        verify.stderr
    );
    let unit_text = std::fs::read_to_string(unit).unwrap();
    for line in [
        "After=network-online.target",
        "Wants=network-online.target",
        "Restart=on-failure",
        "ExecStart=/usr/bin/twinfs run --config /etc/twinfs/twinfs.toml",
        "KillMode=mixed",
    ] {
        assert!(
            unit_text.lines().any(|l| l == line),
            "{line} missing from the unit"
        );
    }

    let version = run(
        Command::new("/usr/bin/twinfs").arg("--version"),
        TOOL_TIMEOUT,
    )
    .expect_ok();
    assert_eq!(
        version.stdout.trim(),
        format!("twinfs {}", env!("CARGO_PKG_VERSION"))
    );

    // The first command a user of the package types (issue 13): the demo,
    // with the installed binary and the scripts it carries.
    let demo = run(Command::new("/usr/bin/twinfs").arg("demo"), DEMO_TIMEOUT).expect_ok();
    for line in [
        "==> failover timeline",
        "on_promote service.start apache2",
        "==> done in",
    ] {
        assert!(
            demo.stdout.contains(line),
            "{line:?} missing from the demo:\n{}",
            demo.stdout
        );
    }

    let page = run(
        Command::new("zcat").arg("/usr/share/man/man1/twinfs.1.gz"),
        TOOL_TIMEOUT,
    )
    .expect_ok();
    assert!(page.stdout.contains(".TH twinfs 1"), "{}", page.stdout);
    let man = run(
        Command::new("man")
            .args(["-l", "/usr/share/man/man1/twinfs-init.1.gz"])
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100"),
        TOOL_TIMEOUT,
    )
    .expect_ok();
    assert!(
        man.stdout.contains("--peer-address") && man.stdout.contains("twinfs-init"),
        "{}",
        man.stdout
    );
    let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/twinfs").unwrap();
    assert!(
        bash.contains("complete -F") && bash.contains("init"),
        "bash completion"
    );

    let conffiles = run(
        Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "twinfs"]),
        TOOL_TIMEOUT,
    )
    .expect_ok();
    for c in ["/etc/twinfs/twinfs.toml", "/etc/twinfs/failover.lua"] {
        assert!(
            conffiles
                .stdout
                .lines()
                .any(|l| l.trim().starts_with(&format!("{c} "))),
            "{c} is not a conffile: {}",
            conffiles.stdout
        );
    }
    let control = run(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&pkgs.deb)
            .args(["Depends", "Recommends"]),
        TOOL_TIMEOUT,
    )
    .expect_ok();
    assert!(control.stdout.contains("fuse3") && control.stdout.contains("iproute2"));
    assert!(
        control.stdout.contains("apache2 | httpd"),
        "{}",
        control.stdout
    );

    // What a configured node adds (a key, a store) must go on purge too.
    std::fs::write("/etc/twinfs/node.key", "not a real key").unwrap();
    std::fs::write(data.join("store-marker"), "x").unwrap();

    drop(guard);
    assert!(!dpkg_installed(), "twinfs still installed after purge");
    for p in [
        "/usr/bin/twinfs",
        "/lib/systemd/system/twinfs.service",
        "/etc/twinfs",
        "/var/lib/twinfs",
        "/usr/share/man/man1/twinfs.1.gz",
        "/usr/share/bash-completion/completions/twinfs",
    ] {
        assert!(!Path::new(p).exists(), "{p} left behind by dpkg --purge");
    }
}

#[test]
fn rpm_metadata_and_scratch_root_install() {
    let test = "rpm_metadata_and_scratch_root_install";
    if !require(test, &["rpm", "cargo-deb", "cargo-generate-rpm"]) {
        return;
    }
    let rpm = &packages().rpm;
    let q = |args: &[&str]| {
        run(Command::new("rpm").args(args).arg(rpm), TOOL_TIMEOUT)
            .expect_ok()
            .stdout
    };
    let info = q(&["-qip"]);
    for want in [
        "twinfs",
        env!("CARGO_PKG_VERSION"),
        "Two-node replicated FUSE filesystem",
    ] {
        assert!(info.contains(want), "rpm -qip lacks {want:?}:\n{info}");
    }
    let requires = q(&["-qp", "--requires"]);
    assert!(
        requires.lines().any(|l| l.trim() == "fuse3")
            && requires.lines().any(|l| l.trim() == "iproute"),
        "{requires}"
    );
    let recommends = q(&["-qp", "--recommends"]);
    assert!(
        recommends.lines().any(|l| l.trim() == "httpd"),
        "{recommends}"
    );

    let list = q(&["-qlp"]);
    for f in FILES
        .iter()
        .map(|f| format!("/{f}"))
        .chain(["/usr/lib/systemd/system/twinfs.service".into()])
    {
        assert!(list.lines().any(|l| l == f), "rpm -qlp lacks {f}:\n{list}");
    }
    let mut config: Vec<&str> = Vec::new();
    let configs = q(&["-qcp"]);
    config.extend(configs.lines());
    config.sort_unstable();
    assert_eq!(
        config,
        ["/etc/twinfs/failover.lua", "/etc/twinfs/twinfs.toml"],
        "rpm -qcp (config files)"
    );
    let scripts = q(&["-qp", "--scripts"]);
    assert!(
        scripts.contains("install -d -m 0700 -o root -g root /var/lib/twinfs")
            && scripts.contains("daemon-reload")
            && scripts.contains("systemctl stop twinfs.service"),
        "{scripts}"
    );

    // Install into a scratch root. Scriptlets would run chrooted there, where
    // there is no shell; their text is checked above (%post makes /var/lib/twinfs).
    let scratch = crate::harness::util::tempdir("twinfs-rpm-root-");
    let root = scratch.path();
    run(
        Command::new("rpm")
            .arg("--root")
            .arg(root)
            .args(["-i", "--nodeps", "--noscripts"])
            .arg(rpm),
        TOOL_TIMEOUT,
    )
    .expect_ok();
    for f in FILES {
        assert!(root.join(f).is_file(), "{f} missing in the scratch root");
    }
    assert!(root.join("usr/lib/systemd/system/twinfs.service").is_file());
    assert!(root.join("usr/share/zsh/site-functions/_twinfs").is_file());
    assert_eq!(mode(&root.join("usr/bin/twinfs")), 0o755);
    run(
        Command::new("rpm")
            .arg("--root")
            .arg(root)
            .args(["-q", "twinfs"]),
        TOOL_TIMEOUT,
    )
    .expect_ok();
}

#[test]
fn init_writes_a_config_that_loads() {
    let dir = crate::harness::util::tempdir("twinfs-init-");
    let config = dir.path().join("etc/twinfs.toml");
    // The data dir: made private by init (issue 13); never the host's /var/lib/twinfs.
    let data = dir.path().join("data");
    let init = |extra: &[&str]| {
        run(
            Command::new(twinfs_bin())
                .args([
                    "init",
                    "--name",
                    "www1",
                    "--listen",
                    "10.99.0.1",
                    "--peer-address",
                    "10.99.0.2:7789",
                    "--interface",
                    "eth0",
                    "--public",
                    "192.168.0.1",
                    "--peer-public",
                    "192.168.0.2",
                    "--ping",
                    "192.168.0.254",
                    "--data-dir",
                ])
                .arg(&data)
                .arg("--config")
                .arg(&config)
                .args(extra),
            TOOL_TIMEOUT,
        )
    };
    let ran = init(&["--vip", "192.168.0.10/24"]).expect_ok();
    for want in [
        "fingerprint: sha256:",
        "peer.crt",
        "peer_fingerprint",
        "systemctl enable --now twinfs",
    ] {
        assert!(
            ran.stdout.contains(want),
            "init output lacks {want:?}:\n{}",
            ran.stdout
        );
    }
    let etc = dir.path().join("etc");
    assert_eq!(mode(&data), 0o700, "twinfs init makes the data dir private");
    assert!(ran.stdout.contains("data dir:"), "{}", ran.stdout);
    assert_eq!(mode(&etc.join("node.key")), 0o600);
    assert_eq!(mode(&etc.join("node.crt")), 0o644);
    // The fingerprint printed is the certificate's.
    let fp = run(
        Command::new(twinfs_bin())
            .arg("fingerprint")
            .arg(etc.join("node.crt")),
        TOOL_TIMEOUT,
    )
    .expect_ok();
    assert!(ran.stdout.contains(fp.stdout.trim()), "{}", fp.stdout);

    // The config loads, and its values reach the hooks: a dry run of the
    // shipped on_promote claims the VIP on the interface given.
    let dry = run(
        Command::new(twinfs_bin())
            .args(["hooks", "dry-run", "promote", "--config"])
            .arg(&config)
            .arg("--script")
            .arg(repo().join("scripts/failover.lua")),
        TOOL_TIMEOUT,
    )
    .expect_ok();
    assert!(
        dry.stdout.contains("192.168.0.10/24") && dry.stdout.contains("eth0"),
        "{}",
        dry.stdout
    );

    // A second run refuses to overwrite; a bad flag names itself and its value.
    let again = init(&["--vip", "192.168.0.10/24"]);
    assert!(
        !again.ok && again.stderr.contains("--force"),
        "{}",
        again.stderr
    );
    let bad = init(&["--vip", "192.168.0.10", "--force"]);
    assert!(
        !bad.ok
            && bad
                .stderr
                .contains("--vip 192.168.0.10: must be ADDRESS/PREFIX, e.g. 10.0.0.10/24"),
        "{}",
        bad.stderr
    );
}
