//! Acceptance (issue 4, load balancing across the pair): both nodes' Apaches
//! run with the site `twinfs apache-conf` writes (`src/apache.rs`), the VIP
//! on node A, a client on the public bridge.
//!
//! No twinfs runs here: each node's DocumentRoot is a plain directory with
//! its own `index.html`, and twinfs's `/health` is played by a vhost of the
//! node's own Apache on 127.0.0.1:9747 that answers 200, or 503 while the
//! file `health-down` exists. What the test shows:
//!
//! - (a) GETs through the VIP are answered by both nodes (the
//!   `X-Twinfs-Node` header, and each node's own page);
//! - (b) POST and PUT through the VIP, and GETs of an admin-named path,
//!   reach the VIP holder's backend only;
//! - (d) a backend whose health URL answers 503 leaves the balancer, and
//!   comes back once it answers 200 again;
//! - (c) with the other node's Apache stopped, requests through the VIP
//!   keep succeeding, all answered by the VIP holder.
//!
//! Every wait is bounded in requests and in time; nothing asserts how fast.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::lab::{self, require_lab, Lab, Node, Place, PublicOpts};
use crate::harness::site::{Backend, Site, NODE_HEADER};
use crate::harness::util;
use crate::harness::web::{self, ApacheConf, Response};

/// The web port of both nodes and the VIP.
const PORT: u16 = 80;
/// Where the stand-in for twinfs's `/health` listens, in each node (the
/// metrics port's default).
const HEALTH_PORT: u16 = 9747;
/// The admin-named path that writes.
const ADMIN: &str = "/admin";
/// Deadline of one request.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long Apache may take to start or stop.
const CTL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the balancer may take to notice a health change (checks run
/// every second, two in a row decide): generous, CI machines are slow.
const SETTLE: Duration = Duration::from_secs(60);
/// Most requests a wait sends before giving up (with [`SETTLE`]).
const MAX_TRIES: usize = 600;
/// Pause between the requests of a wait.
const PAUSE: Duration = Duration::from_millis(100);

fn name(node: Node) -> &'static str {
    match node {
        Node::A => "alpha",
        Node::B => "beta",
    }
}

fn page(node: Node) -> String {
    format!("<p>served by {}</p>\n", name(node))
}

/// The stand-in for twinfs's `/health` on 127.0.0.1:9747: 200 from
/// `dir/health.txt` (the lab writer puts "ok" there), 503 while
/// `dir/health-down` exists.
fn health_vhost(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"# Stand-in for twinfs's /health (tests/balance.rs).
Listen 127.0.0.1:{HEALTH_PORT}
<VirtualHost 127.0.0.1:{HEALTH_PORT}>
    RewriteEngine On
    RewriteCond "{d}/health-down" -f
    RewriteRule "^/health$" "-" [R=503,L]
    Alias "/health" "{d}/health.txt"
</VirtualHost>
<Directory "{d}">
    Require all granted
</Directory>
"#
    )
}

/// The two nodes' Apaches, started, and the VIP on A.
struct Balanced {
    lab: Lab,
    confs: Vec<ApacheConf>,
    _dir: tempfile::TempDir,
}

impl Balanced {
    fn start(tag: &str) -> Balanced {
        let lab = Lab::with_public(tag, PublicOpts::default());
        let dir = util::tempdir("twinfs-balance-");
        let open = std::fs::Permissions::from_mode(0o755);
        // Apache's workers run as www-data.
        std::fs::set_permissions(dir.path(), open.clone()).expect("chmod tempdir");
        let mut confs = Vec::new();
        for node in Node::ALL {
            let d = dir.path().join(node.letter());
            let root = d.join("root");
            std::fs::create_dir_all(root.join(&ADMIN[1..])).expect("mkdir docroot");
            std::fs::write(root.join("index.html"), page(node)).expect("write index.html");
            std::fs::write(root.join(&ADMIN[1..]).join("index.html"), page(node))
                .expect("write admin/index.html");
            for p in [d.clone(), root.clone(), root.join(&ADMIN[1..])] {
                std::fs::set_permissions(&p, open.clone()).expect("chmod");
            }
            let apache_dir = d.join("apache");
            std::fs::create_dir_all(&apache_dir).expect("mkdir apache");
            let site = Site {
                this: Backend {
                    name: name(node).into(),
                    addr: (lab.public_addr(node), PORT).into(),
                },
                peer: Backend {
                    name: name(node.peer()).into(),
                    addr: (lab.public_addr(node.peer()), PORT).into(),
                },
                vip: lab.vip().into(),
                docroot: root,
                health_url: format!("http://127.0.0.1:{HEALTH_PORT}/health"),
                write_paths: vec![ADMIN.into()],
            };
            let conf = ApacheConf::write_site(&apache_dir, &site, &health_vhost(&apache_dir));
            if let Err(e) = web::run_in(&lab, Place::Node(node), &conf.start_argv(), CTL_TIMEOUT) {
                panic!(
                    "starting {}'s Apache: {e}\n{}\nconfig:\n{}",
                    name(node),
                    conf.logs(),
                    std::fs::read_to_string(conf.conf_path()).unwrap_or_default()
                );
            }
            confs.push(conf);
        }
        let ns = lab.node(Node::A).ns_name().to_string();
        let cidr = format!("{}/{}", lab.vip(), lab.public_prefix_len());
        lab::ip(&["-n", &ns, "addr", "add", &cidr, "dev", lab::PUBLIC_DEV]).expect("VIP on A");
        Balanced {
            lab,
            confs,
            _dir: dir,
        }
    }

    fn conf(&self, node: Node) -> &ApacheConf {
        &self.confs[match node {
            Node::A => 0,
            Node::B => 1,
        }]
    }

    /// One request from the client to the VIP.
    fn request(&self, method: &str, path: &str) -> Result<Response, String> {
        let url = format!("http://{}:{PORT}{path}", self.lab.vip());
        web::http_request(&self.lab, Place::Client, method, &url, b"x=1", IO_TIMEOUT)
    }

    /// One request that must be answered, with `status` if given; returns
    /// which node answered (its `X-Twinfs-Node`).
    fn served_by(&self, method: &str, path: &str, status: impl Into<Option<u16>>) -> String {
        let status = status.into();
        let r = self
            .request(method, path)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        assert!(
            status.is_none_or(|s| s == r.status),
            "{method} {path}: status {} (want {status:?}): {:?}\n{}",
            r.status,
            String::from_utf8_lossy(&r.body),
            self.logs()
        );
        let node = r
            .header(NODE_HEADER)
            .unwrap_or_else(|| panic!("{method} {path}: no {NODE_HEADER} in {:?}", r.headers))
            .to_string();
        if method == "GET" && r.status == 200 {
            let want = Node::ALL
                .into_iter()
                .find(|n| name(*n) == node)
                .map(page)
                .unwrap_or_else(|| panic!("{NODE_HEADER}: unknown node {node:?}"));
            assert_eq!(
                String::from_utf8_lossy(&r.body),
                want,
                "{method} {path}: the body is not {node}'s page"
            );
        }
        node
    }

    /// GETs `/` until `done(answers so far)` holds, at most [`MAX_TRIES`]
    /// requests and [`SETTLE`]; every answer must be a 200. Returns whether
    /// it held, and the answers.
    fn get_until(&self, done: impl Fn(&[String]) -> bool) -> (bool, Vec<String>) {
        let start = Instant::now();
        let mut seen = Vec::new();
        for _ in 0..MAX_TRIES {
            if start.elapsed() > SETTLE {
                break;
            }
            seen.push(self.served_by("GET", "/", 200));
            if done(&seen) {
                return (true, seen);
            }
            std::thread::sleep(PAUSE);
        }
        (false, seen)
    }

    /// Both nodes' start output and error logs.
    fn logs(&self) -> String {
        self.confs.iter().map(ApacheConf::logs).collect()
    }
}

/// The last `n` answers all came from `node`.
fn last_n_from(seen: &[String], n: usize, node: Node) -> bool {
    seen.len() >= n && seen[seen.len() - n..].iter().all(|s| s == name(node))
}

#[test]
fn balance_reads_go_to_both_nodes_and_writes_to_the_vip_holder() {
    let test = "balance_reads_go_to_both_nodes_and_writes_to_the_vip_holder";
    if !require_lab(test) || !web::require_apache(test) {
        return;
    }
    let b = Balanced::start("balance");
    assert_eq!(b.lab.vip_holders(), vec![Node::A]);

    // (a) Reads through the VIP: both nodes answer.
    let (ok, seen) = b.get_until(|s| Node::ALL.iter().all(|n| s.iter().any(|x| x == name(*n))));
    assert!(
        ok,
        "GET / through the VIP never reached both nodes: {seen:?}"
    );

    // (b) Writes and the admin-named path: the VIP holder only, every time
    // (balanced, they would alternate).
    for i in 0..6 {
        for method in ["POST", "PUT", "DELETE"] {
            // Whatever a static tree answers them, a backend answers.
            let by = b.served_by(method, "/index.html", None);
            assert_eq!(by, name(Node::A), "{method} #{i} reached {by}");
        }
        for path in [ADMIN, "/admin/", "/admin/index.html"] {
            let by = b.served_by("GET", path, if path == ADMIN { 301 } else { 200 });
            assert_eq!(by, name(Node::A), "GET {path} #{i} reached {by}");
        }
    }
    // A path that only starts like the admin one is an ordinary read
    // (missing on both nodes).
    b.served_by("GET", "/administrator", 404);

    // (d) Beta's health answers 503: it leaves the balancer...
    let down = b.conf(Node::B).dir().join("health-down");
    std::fs::write(&down, b"").expect("mark beta unhealthy");
    let (ok, seen) = b.get_until(|s| last_n_from(s, 10, Node::A));
    assert!(
        ok,
        "beta still gets reads with its health at 503: {seen:?}\n{}",
        b.logs()
    );
    for i in 0..20 {
        let by = b.served_by("GET", "/", 200);
        assert_eq!(by, name(Node::A), "GET #{i} after beta turned unhealthy");
    }
    // ... and comes back once it answers 200 again.
    std::fs::remove_file(&down).expect("mark beta healthy");
    let (ok, seen) = b.get_until(|s| s.iter().any(|x| x == name(Node::B)));
    assert!(ok, "beta never came back: {seen:?}\n{}", b.logs());

    // (c) Beta's Apache stops: every read still succeeds, from alpha.
    web::run_in(
        &b.lab,
        Place::Node(Node::B),
        &b.conf(Node::B).stop_argv(),
        CTL_TIMEOUT,
    )
    .expect("stop beta's Apache");
    assert_eq!(b.conf(Node::B).running_pid(), None);
    for i in 0..30 {
        let by = b.served_by("GET", "/", 200);
        assert_eq!(by, name(Node::A), "GET #{i} with beta's Apache stopped");
        std::thread::sleep(PAUSE);
    }
    // Writes too.
    assert_eq!(b.served_by("POST", "/index.html", None), name(Node::A));
}
